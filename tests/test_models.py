import time

import pytest
import torch

from hf_fingerprint import ModelLoadError, load_model, tiny_model


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_tiny_models_are_seeded_and_generate(arch):
    model, tokenizer = tiny_model(arch, seed=0)
    again, _ = tiny_model(arch, seed=0)
    other, _ = tiny_model(arch, seed=1)
    w = dict(model.named_parameters())
    assert all(torch.equal(p, dict(again.named_parameters())[n]) for n, p in w.items())
    assert not all(torch.equal(p, dict(other.named_parameters())[n]) for n, p in w.items())
    ids = tokenizer("hi", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3


def test_tiny_tokenizer_is_lossless_with_chat_template():
    _, tokenizer = tiny_model()
    text = "明月照松 ветер zeph かたつむり 🎉 naïve"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and text in prompt


def test_tiny_model_rejects_unknown_arch():
    with pytest.raises(ModelLoadError, match="Unknown tiny architecture"):
        tiny_model("gpt2")


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="No such model folder"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        load_model(tmp_path, dtype="float7")


def test_load_model_reads_saved_folder(tmp_path):
    model, tokenizer = tiny_model("qwen3")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(tmp_path, dtype="float32")
    assert loaded_tok.padding_side == "left"
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p, q), name


@pytest.mark.real_model
def test_embedded_model_answers_paris_and_loads_fast(smollm):
    from hf_fingerprint.generation import generate

    model, tokenizer = smollm
    [[answer]] = generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=12)
    assert "Paris" in answer
    started = time.perf_counter()
    load_model("smollm2-135m-instruct")  # from the safetensors cache
    assert time.perf_counter() - started < 10
