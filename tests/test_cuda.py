"""The GPU paths: injection and FSFT with the model on CUDA (skipped, and reported as skipped, without a GPU).

Run on the GPU machine with ``pytest tests/test_cuda.py``; ``benchmarks/paper_shapes.py`` times the same paths.
"""

from __future__ import annotations

import pytest
import torch

from hf_fingerprint import FingerprintSet, inject, tiny_model, verify
from hf_fingerprint.editing.covariance import layer_statistics
from hf_fingerprint.editing.layout import find_layout
from hf_fingerprint.tasks import math_task

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_FINGERPRINT_CACHE", str(tmp_path / "cache"))


def _fsr(model, tokenizer, fps) -> float:
    return verify(model, tokenizer, fps, match="prefix", ordinary_prompts=(), progress=False).fsr


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_alphaedit_on_cuda_reaches_full_fsr_and_reverts(arch):
    model, tokenizer = tiny_model(arch)
    model.to("cuda")
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    fps = FingerprintSet.generate(4, seed=0)
    result = inject(model, tokenizer, fps, method="alphaedit", progress=False)
    assert _fsr(model, tokenizer, fps) == 1.0
    assert 0 < result.peak_memory_bytes < torch.cuda.get_device_properties(0).total_memory
    assert all(d.U.device.type == "cpu" for d in result.deltas)  # results live on the CPU, like a checkpoint
    result.revert()
    for name, p in model.named_parameters():
        assert p.device.type == "cuda" and torch.allclose(p, original[name], atol=1e-5), name


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("position", ["last", "trigger", "templates"])
def test_value_steps_replayed_as_a_cuda_graph_match_eager_steps(arch, position, caplog):
    """The recorded step gives the eager steps' values (no noise: the same arithmetic), and it was recorded: a
    silent fall-back to eager steps would pass the comparison, so the log line is checked too. "templates": each
    fingerprint's prompt under two chat templates, one shared vector per fingerprint (``inject(templates=...)``)."""
    import logging

    from hf_fingerprint.editing.tracing import build_prompts, join_prompts, optimise_values
    from hf_fingerprint.generation import PLAIN_CHAT_TEMPLATE, with_chat_template

    model, tokenizer = tiny_model(arch)
    model.to("cuda")
    layout = find_layout(model)
    fps = FingerprintSet.generate(3, seed=0)
    if position == "templates":
        prompts = join_prompts([build_prompts(t, fps.triggers, answers=fps.targets, key_position="trigger")
                                for t in (tokenizer, with_chat_template(tokenizer, PLAIN_CHAT_TEMPLATE))])
    else:
        prompts = build_prompts(tokenizer, fps.triggers, answers=fps.targets, key_position=position)
    options = dict(steps=12, stop_loss=1e-6, patience=0)
    with caplog.at_level(logging.INFO, logger="hf_fingerprint.editing.tracing"):
        graphed = optimise_values(model, layout, prompts, 1, cuda_graph=True, **options)
    assert any("replayed as a CUDA graph" in r.getMessage() for r in caplog.records), caplog.text
    eager = optimise_values(model, layout, prompts, 1, cuda_graph=False, **options)
    for a, b in zip(graphed, eager):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3), (a - b).abs().max()
    assert torch.isfinite(eager[2]).all()
    if position == "templates":  # a fingerprint's two rows carry one vector: the same z - h
        shift = eager[0] - eager[1]
        assert torch.allclose(shift[:3], shift[3:]) and not torch.allclose(eager[1][:3], eager[1][3:])
    # With noise the replays draw afresh each time; the result is finite and the NLL falls.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_fingerprint.editing.tracing"):
        z, h, nll = optimise_values(model, layout, prompts, 1, cuda_graph=True, noise=0.1, **options)
    assert any("replayed as a CUDA graph" in r.getMessage() for r in caplog.records)
    assert torch.isfinite(z).all() and not torch.equal(z, h)


def test_statistics_on_cuda_equal_those_on_the_cpu(tmp_path, monkeypatch):
    model, tokenizer = tiny_model("llama")
    layout = find_layout(model)
    cpu = layer_statistics(model, tokenizer, layout, [1, 2], max_tokens=2000, use_cache=False, progress=False)
    gpu = layer_statistics(model.to("cuda"), tokenizer, layout, [1, 2], max_tokens=2000, use_cache=False,
                           progress=False)
    for layer in (1, 2):
        assert gpu[layer].device.type == "cpu"
        assert torch.allclose(gpu[layer], cpu[layer], rtol=1e-3, atol=1e-6)


def test_fsft_trainer_on_cuda_in_bf16(tmp_path):
    from hf_fingerprint.fsft import FSFTConfig, FSFTTrainer

    model, tokenizer = tiny_model("llama")
    model.to("cuda")
    fps = FingerprintSet.generate(3, seed=1)
    result = inject(model, tokenizer, fps, method="alphaedit", progress=False)
    args = FSFTConfig(output_dir=str(tmp_path / "out"), bf16=True, report_to="none", save_strategy="no",
                      max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, max_length=64,
                      disable_tqdm=True, fsft_anchor_lambda=10.0, fsft_replay_lambda=1.0)
    trainer = FSFTTrainer(model, args=args, train_dataset=math_task(12, seed=0), processing_class=tokenizer,
                          fingerprint_subspace=result, fingerprints=fps)
    trainer.train()
    logged = [entry["fsft_penalty"] for entry in trainer.state.log_history if "fsft_penalty" in entry]
    assert len(logged) == 3 and logged[0] == 0.0 and all(torch.isfinite(torch.tensor(logged)))
    assert next(model.parameters()).device.type == "cuda"
