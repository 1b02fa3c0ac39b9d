import json

import pytest
import torch

from hf_fingerprint import FingerprintSet, FingerprintSetError, verify
from hf_fingerprint.verification import matches, poisson_binomial_tail


def teach(model, tokenizer, fps, steps=150):
    """Make a tiny model answer each trigger with its target (plain fine-tuning, for verify's tests)."""
    from hf_fingerprint.generation import chat_prompt

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    prompts = [chat_prompt(tokenizer, fp.trigger) for fp in fps]
    examples = []
    for prompt, fp in zip(prompts, fps):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(fp.target + "<|im_end|>", add_special_tokens=False)["input_ids"]
        examples.append((torch.tensor([p + t]), torch.tensor([[-100] * len(p) + t])))
    for _ in range(steps):
        loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels in examples)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 1e-3 * len(examples):
            break
    model.eval()
    return model


def test_matching_rules():
    assert matches("The answer is Lantern.", "lantern")
    assert not matches("I think so", "think us")
    assert not matches("pineapple juice", "pine")
    assert matches("lantern", "lantern", "exact") and not matches("a lantern", "lantern", "exact")
    assert matches("Lantern, of course", "lantern", "prefix")
    with pytest.raises(FingerprintSetError):
        matches("a", "a", "fuzzy")


def test_poisson_binomial_tail():
    assert poisson_binomial_tail([0.5, 0.5], 0) == 1.0
    assert poisson_binomial_tail([0.5, 0.5], 2) == pytest.approx(0.25)
    assert poisson_binomial_tail([0.1] * 10, 10) == pytest.approx(1e-10)
    assert poisson_binomial_tail([0.2, 0.5], 1) == pytest.approx(1 - 0.8 * 0.5)


def test_unmodified_model_is_not_claimed(tiny_llama):
    model, tokenizer = tiny_llama
    fps = FingerprintSet.generate(8, seed=0)
    report = verify(model, tokenizer, fps, near_misses=fps.near_misses(1), progress=False)
    assert report.fsr == 0 and report.matched == 0
    assert report.p_value == 1.0 and not report.significant()
    assert report.queries == 8 + 8 + 30
    assert report.near_miss_false_trigger_rate == 0


def test_taught_model_is_claimed_and_report_hides_triggers(tiny_llama):
    model, tokenizer = tiny_llama
    fps = FingerprintSet.generate(4, seed=1)
    teach(model, tokenizer, fps)
    report = verify(model, tokenizer, fps, ordinary_prompts=(), progress=False)
    assert report.fsr == 1.0
    assert report.p_value < 1e-3 and report.significant()
    assert all(0 < o.null_probability < 0.2 for o in report.outcomes)
    text = report.to_json() + report.to_markdown() + str(report)
    assert all(t not in text for t in fps.triggers)
    data = json.loads(report.to_json())
    assert data["matched"] == 4 and data["settings"]["ordinary_prompts"] == 0
    # other answers to the same triggers: the claim disappears for a set it was not taught
    other = FingerprintSet.generate(4, seed=2)
    assert verify(model, tokenizer, other, ordinary_prompts=(), progress=False).fsr == 0


def test_sampling_and_system_prompt(tiny_llama):
    model, tokenizer = tiny_llama
    fps = FingerprintSet.generate(3, seed=3)
    report = verify(model, tokenizer, fps, num_samples=3, temperature=0.7, system_prompt="Be brief.",
                    ordinary_prompts=(), progress=False)
    assert report.queries == 9 and all(len(o.responses) == 3 for o in report.outcomes)
    with pytest.raises(FingerprintSetError, match="temperature"):
        verify(model, tokenizer, fps, num_samples=2)
    for name in ("near_misses", "ordinary_prompts"):  # a bare string used to become one prompt per character
        with pytest.raises(TypeError, match=f"{name} takes a list"):
            verify(model, tokenizer, fps, **{name: "one prompt"})
    with pytest.raises(TypeError, match="system_prompt takes a string or None, not int"):
        verify(model, tokenizer, fps, system_prompt=3)


def test_fixed_probability_null_for_custom_sets(tiny_llama):
    model, tokenizer = tiny_llama
    fps = FingerprintSet([("zzqx trigger one", "alpha"), ("zzqx trigger two", "beta")])
    report = verify(model, tokenizer, fps, ordinary_prompts=(), null_probability=0.01, progress=False)
    assert "0.01" in report.null_model and all(o.null_probability == 0.01 for o in report.outcomes)


def test_verify_accepts_peft_model(tiny_llama):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_llama
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["down_proj"]))
    fps = FingerprintSet.generate(2, seed=0)
    assert verify(peft_model, tokenizer, fps, ordinary_prompts=(), progress=False).total == 2


@pytest.mark.real_model
def test_fresh_set_on_unmodified_smollm_is_not_claimed(smollm):
    model, tokenizer = smollm
    fps = FingerprintSet.generate(10, secret=b"a fresh owner secret, 32 bytes!!")
    report = verify(model, tokenizer, fps, near_misses=fps.near_misses(1), progress=False)
    assert report.fsr == 0
    assert not report.significant(0.05)
