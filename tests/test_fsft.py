"""FSFTTrainer and FingerprintSubspace on a tiny random Llama with a synthetic low-rank fingerprint edit."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_fingerprint.editing.delta import EditDelta
from hf_fingerprint.errors import FingerprintError, SubspaceError
from hf_fingerprint.fsft import FingerprintSubspace, FSFTConfig, FSFTTrainer
from hf_fingerprint.models import tiny_model
from hf_fingerprint.tasks import math_task

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

EDITED = [f"model.layers.{i}.mlp.down_proj" for i in (2, 3, 4)]
RANK = 3


# Tiny models run faster on one thread, and the test machine's cores are shared (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


class _Injection:
    """What an injection hands over: its edits as ``deltas``."""

    def __init__(self, deltas):
        self.deltas = deltas


def _deltas(scale: float = 0.2) -> list[EditDelta]:
    generator = torch.Generator().manual_seed(7)
    return [
        EditDelta(name, torch.randn(64, RANK, generator=generator) * scale, torch.randn(192, RANK, generator=generator))
        for name in EDITED
    ]


@pytest.fixture(scope="module")
def models():
    """(base model, fingerprinted model = base + edits, tokenizer, deltas)."""
    base, tokenizer = tiny_model(seed=0)
    fingerprinted, _ = tiny_model(seed=0)
    deltas = _deltas()
    with torch.no_grad():
        for delta in deltas:
            fingerprinted.get_submodule(delta.module).weight += delta.dense()
    return base, fingerprinted, tokenizer, deltas


@pytest.fixture(scope="module")
def dataset():
    return math_task(16, seed=0)


def _copy(model):
    clone, _ = tiny_model(seed=0)
    clone.load_state_dict(model.state_dict())
    return clone


def _config(tmp_path, **overrides) -> FSFTConfig:
    return FSFTConfig(**_settings(tmp_path, **overrides))


def _settings(tmp_path, **overrides) -> dict:
    settings = dict(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", save_strategy="no", max_steps=3,
        per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1, max_length=64, seed=0,
        disable_tqdm=True, dataloader_num_workers=0, activation_checkpointing=False,
    )
    settings.update(overrides)
    return settings


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name).weight.detach().clone() for name in EDITED}


def _logged(trainer, key="fsft_penalty") -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


# ----- the subspace -----


def test_from_deltas_factors_the_edit(models):
    _, _, _, deltas = models
    extra = EditDelta(EDITED[0], torch.randn(64, 1), torch.randn(192, 1))
    subspace = FingerprintSubspace.build(_Injection(deltas + [extra]))
    assert list(subspace) == EDITED and not subspace.has_reference
    for delta in deltas:
        sub = subspace[delta.module]
        expected = delta.dense() + (extra.dense() if delta.module == EDITED[0] else 0)
        assert sub.rank == (RANK + 1 if delta.module == EDITED[0] else RANK)
        assert torch.allclose(sub.dense(), expected, atol=1e-5)
        assert torch.allclose(sub.V.T @ sub.V, torch.eye(sub.rank), atol=1e-5)
        assert torch.allclose(sub.U.T @ sub.U, torch.eye(sub.rank), atol=1e-5)
        assert bool((sub.S[:-1] >= sub.S[1:]).all())
    truncated = subspace.truncated(rank=1)
    assert all(truncated[name].rank == 1 for name in EDITED)
    by_energy = subspace.truncated(energy=1.0)
    assert [by_energy[n].rank for n in EDITED] == [subspace[n].rank for n in EDITED]


def _save_adapter(base, deltas, folder) -> None:
    """Save the edits as a stock PEFT LoRA adapter (scaling 2, one module at scaling 1 via alpha_pattern)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["down_proj"], lora_dropout=0.0,
                        layers_to_transform=[2, 3, 4], alpha_pattern={"layers.4.mlp.down_proj": RANK})
    peft_model = get_peft_model(_copy(base), config)
    with torch.no_grad():
        for delta in deltas:
            layer = peft_model.base_model.model.get_submodule(delta.module)
            scaling = layer.scaling["default"]
            layer.lora_B["default"].weight.copy_(delta.U / scaling)
            layer.lora_A["default"].weight.copy_(delta.V.T)
    peft_model.save_pretrained(str(folder))


def test_from_adapter_reads_a_stock_peft_lora(models, tmp_path):
    from peft import PeftModel

    base, fingerprinted, _, deltas = models
    folder = tmp_path / "injection" / "adapter"
    _save_adapter(base, deltas, folder)
    subspace = FingerprintSubspace.build(str(tmp_path / "injection"))  # the adapter sits in a sub-folder
    assert list(subspace) == EDITED
    merged = PeftModel.from_pretrained(_copy(base), str(folder)).merge_and_unload()
    for name in EDITED:
        dense = merged.get_submodule(name).weight - base.get_submodule(name).weight
        assert torch.allclose(subspace[name].dense(), dense, atol=1e-5)
        assert torch.allclose(dense, fingerprinted.get_submodule(name).weight - base.get_submodule(name).weight,
                              atol=1e-5)


def test_a_real_injection_result_is_a_subspace_source():
    from hf_fingerprint.editing.inject import inject
    from hf_fingerprint.fingerprints import FingerprintSet

    model, tokenizer = tiny_model(seed=1)
    result = inject(model, tokenizer, FingerprintSet.generate(3, seed=0), method="memit", near_misses=None,
                    progress=False, verify_after=False, stats_tokens=2000)
    subspace = FingerprintSubspace.build(result)
    assert sorted(subspace) == sorted(delta.module for delta in result.deltas)
    for delta in result.deltas:
        assert torch.allclose(subspace[delta.module].dense(), delta.dense(), atol=1e-5 * delta.dense().abs().max())


def test_from_pair_finds_the_edited_modules_and_reference(models):
    base, fingerprinted, _, deltas = models
    subspace = FingerprintSubspace.build((base, fingerprinted))
    assert list(subspace) == EDITED and subspace.has_reference
    for delta in deltas:
        sub = subspace[delta.module]
        assert sub.rank == RANK
        assert torch.allclose(sub.dense(), delta.dense(), atol=1e-5)
        assert torch.allclose(sub.reference, fingerprinted.get_submodule(delta.module).weight @ sub.V, atol=1e-5)


def test_bad_inputs_raise_subspace_error(models, tmp_path, dataset):
    base, fingerprinted, tokenizer, deltas = models
    with pytest.raises(SubspaceError, match="Cannot build a fingerprint subspace from int"):
        FingerprintSubspace.build(42)
    with pytest.raises(SubspaceError, match="is not a folder"):
        FingerprintSubspace.build(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SubspaceError, match="not a LoRA adapter folder"):
        FingerprintSubspace.build(str(tmp_path / "empty"))
    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(SubspaceError, match="type 'IA3'"):
        FingerprintSubspace.build(str(tmp_path / "ia3"))
    with pytest.raises(SubspaceError, match="No nn.Linear weight differs"):
        FingerprintSubspace.build((base, _copy(base)))
    with pytest.raises(SubspaceError, match="No edit deltas"):
        FingerprintSubspace.from_deltas([])
    with pytest.raises(SubspaceError, match="is zero"):
        FingerprintSubspace.from_deltas([EditDelta(EDITED[0], torch.zeros(64, 2), torch.randn(192, 2))])
    with pytest.raises(SubspaceError, match="dense .*from_pair"):
        FingerprintSubspace.from_deltas([EditDelta(EDITED[0], None, None, dense_update=torch.randn(64, 192))])
    wrong_shape = [EditDelta("model.layers.1.mlp.up_proj", torch.randn(64, 1), torch.randn(192, 1))]
    with pytest.raises(SubspaceError, match="shape"):
        FingerprintSubspace.from_deltas(wrong_shape, model=base)
    missing = [EditDelta("model.layers.99.mlp.down_proj", torch.randn(64, 1), torch.randn(192, 1))]
    with pytest.raises(SubspaceError, match="has no module"):
        FSFTTrainer(_copy(fingerprinted), args=_config(tmp_path), train_dataset=dataset,
                    processing_class=tokenizer, fingerprint_subspace=missing)
    with pytest.raises(ValueError, match="fsft_variant"):
        _config(tmp_path, fsft_variant="sideways")
    with pytest.raises(ValueError, match="fsft_energy"):
        _config(tmp_path, fsft_energy=0.0)
    with pytest.raises(ValueError, match="fsft_lambda"):
        _config(tmp_path, fsft_lambda=-1.0)
    with pytest.raises(ValueError, match="fsft_rank"):
        _config(tmp_path, fsft_rank=0)


# ----- the trainer -----


def test_penalty_starts_at_zero_grows_and_has_a_gradient(models, dataset, tmp_path):
    _, fingerprinted, tokenizer, deltas = models
    model = _copy(fingerprinted)
    reference = _weights(model)
    trainer = FSFTTrainer(model, args=_config(tmp_path, fsft_lambda=1.0), train_dataset=dataset,
                          processing_class=tokenizer, fingerprint_subspace=_Injection(deltas))
    trainer.train()
    logged = _logged(trainer)
    assert len(logged) == 3
    assert logged[0] == 0.0
    assert logged[-1] > 0.0

    subspace = trainer.fingerprint_subspace
    model.zero_grad(set_to_none=True)
    for variant in ("input", "two_sided", "direction"):
        value = trainer.fsft_penalty(variant)
        expected = []
        for name in EDITED:
            sub = subspace[name]
            drift = model.get_submodule(name).weight.detach() - reference[name]
            energy = float((sub.S**2).sum())
            if variant == "input":
                f = (drift @ sub.V).pow(2).sum()
            elif variant == "two_sided":
                f = (sub.U.T @ drift @ sub.V).pow(2).sum()
            else:
                f = (drift * sub.dense()).sum() ** 2 / energy
            expected.append(f / energy)
        # float32: the trainer computes W V - We V (cached), the check (W - We) V; at ~1e-7 they differ by ~1e-4
        assert value.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-3)
        assert value.item() > 0
    trainer.fsft_penalty().backward()
    for name in EDITED:
        assert model.get_submodule(name).weight.grad.norm() > 0
    assert model.get_submodule("model.layers.1.mlp.down_proj").weight.grad is None


def _one_step(base, subspace, tokenizer, tmp_path, *, batch, accumulation, fsft_lambda):
    model = _copy(base)
    args = _config(tmp_path, max_steps=1, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                   optim="sgd", learning_rate=0.5, max_grad_norm=0.0, weight_decay=0.0, fsft_lambda=fsft_lambda,
                   lr_scheduler_type="constant")
    trainer = FSFTTrainer(model, args=args, train_dataset=math_task(4, seed=9), processing_class=tokenizer,
                          fingerprint_subspace=subspace)
    trainer.train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_gradient_accumulation_gives_the_same_update(models, tmp_path):
    base, fingerprinted, tokenizer, _ = models
    # Training the base model against the fingerprinted reference: the penalty and its gradient are large at once.
    subspace = FingerprintSubspace.from_pair(base, fingerprinted)
    with pytest.warns(UserWarning, match="does not carry the fingerprint edit"):
        whole = _one_step(base, subspace, tokenizer, tmp_path, batch=4, accumulation=1, fsft_lambda=100.0)
        split = _one_step(base, subspace, tokenizer, tmp_path, batch=2, accumulation=2, fsft_lambda=100.0)
        unpenalised = _one_step(base, subspace, tokenizer, tmp_path, batch=4, accumulation=1, fsft_lambda=0.0)
    penalty_effect = max((whole[n] - unpenalised[n]).abs().max().item() for n in whole)
    mismatch = max((whole[n] - split[n]).abs().max().item() for n in whole)
    assert penalty_effect > 1e-2
    assert mismatch < 1e-5 * max(1.0, penalty_effect) + 1e-6


def test_lora_path_penalises_the_adapter_drift(models, dataset, tmp_path):
    from peft import LoraConfig

    _, fingerprinted, tokenizer, deltas = models
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj", "up_proj"], lora_dropout=0.0)
    drifts = {}
    for fsft_lambda in (0.0, 1e3):
        args = _config(tmp_path, max_steps=4, learning_rate=3e-2, fsft_lambda=fsft_lambda)
        trainer = FSFTTrainer(_copy(fingerprinted), args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=lora, fingerprint_subspace=deltas)
        trainer.train()
        logged = _logged(trainer)
        assert logged[0] == 0.0 and logged[-1] > 0.0
        # The trainer's penalty equals the one computed from the merged LoRA update.
        peft_model = trainer.model
        energies, terms = [], []
        for name in EDITED:
            sub = trainer.fingerprint_subspace[name]
            layer = peft_model.base_model.model.get_submodule(name)
            dense = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
            terms.append((dense.detach() @ sub.V).pow(2).sum() / (sub.S**2).sum())
            energies.append(dense.detach().norm())
        assert trainer.fsft_penalty().item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-4)
        assert min(energies) > 0  # the adapter moved
        drifts[fsft_lambda] = torch.stack(terms).mean().item()
    assert drifts[1e3] < 0.2 * drifts[0.0]


def test_project_keeps_the_drift_off_the_subspace(models, dataset, tmp_path):
    from trl import SFTConfig, SFTTrainer

    _, fingerprinted, tokenizer, deltas = models
    subspace = FingerprintSubspace.from_deltas(deltas)

    def relative_drift(model, reference):
        ratios = []
        for name in EDITED:
            drift = model.get_submodule(name).weight.detach() - reference[name]
            ratios.append(((drift @ subspace[name].V).norm() / drift.norm()).item())
        return max(ratios)

    projected = _copy(fingerprinted)
    start = _weights(projected)
    trainer = FSFTTrainer(projected, args=_config(tmp_path, max_steps=4, fsft_variant="project", weight_decay=0.1),
                          train_dataset=dataset, processing_class=tokenizer, fingerprint_subspace=subspace)
    trainer.train()
    assert min((projected.get_submodule(n).weight - start[n]).norm().item() for n in EDITED) > 1e-3
    assert relative_drift(projected, start) < 1e-5
    assert max(_logged(trainer)) < 1e-10

    plain = _copy(fingerprinted)
    sft_args = SFTConfig(**_settings(tmp_path, max_steps=4, weight_decay=0.1))
    SFTTrainer(plain, args=sft_args, train_dataset=dataset, processing_class=tokenizer).train()
    assert relative_drift(plain, start) > 1e-2


def test_project_with_lora_keeps_the_adapter_off_the_subspace(models, dataset, tmp_path):
    from peft import LoraConfig

    _, fingerprinted, tokenizer, deltas = models
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj"], lora_dropout=0.0)
    trainer = FSFTTrainer(_copy(fingerprinted), args=_config(tmp_path, max_steps=3, fsft_variant="project"),
                          train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
                          fingerprint_subspace=deltas)
    trainer.train()
    for name in EDITED:
        layer = trainer.model.base_model.model.get_submodule(name)
        lora_a = layer.lora_A["default"].weight.detach()
        assert layer.lora_B["default"].weight.norm() > 0
        assert (lora_a @ trainer.fingerprint_subspace[name].V).norm() < 1e-5 * lora_a.norm()


def test_model_card_and_config_conversion(models, dataset, tmp_path):
    from trl import SFTConfig

    _, fingerprinted, tokenizer, deltas = models
    sft_args = SFTConfig(**_settings(tmp_path, max_steps=1, eos_token="<|im_end|>"))
    trainer = FSFTTrainer(_copy(fingerprinted), args=sft_args, train_dataset=dataset, processing_class=tokenizer,
                          fingerprint_subspace=deltas)
    assert isinstance(trainer.args, FSFTConfig) and trainer.args.fsft_variant == "input"
    assert trainer.args.max_length == 64 and trainer.args.eos_token == "<|im_end|>"
    trainer.create_model_card(model_name="tiny-fsft")
    card = (tmp_path / "README.md").read_text()
    assert "FSFT" in card and "2509.03122" in card and "fsft" in card


def test_cli_fsft_help_and_end_to_end(models, tmp_path, capsys):
    import argparse

    from hf_fingerprint.fsft.cli import add_fsft_command

    base, fingerprinted, tokenizer, deltas = models
    parser = argparse.ArgumentParser(prog="hf-fingerprint")
    fsft_parser = add_fsft_command(parser.add_subparsers(dest="command"))
    for action in fsft_parser._actions:
        assert action.help, f"{action.dest} has no help"
    fsft_parser.print_help()
    assert "--lambda" in capsys.readouterr().out

    fingerprinted.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    _save_adapter(base, deltas, tmp_path / "adapter")
    math_task(12, seed=4).to_json(str(tmp_path / "train.jsonl"))
    out = tmp_path / "out"
    args = parser.parse_args([
        "fsft", str(tmp_path / "model"), "--fingerprint", str(tmp_path / "adapter"), "--dataset",
        str(tmp_path / "train.jsonl"), "--max-steps", "2", "--batch-size", "2", "--max-length", "64",
        "--learning-rate", "1e-2", "--logging-steps", "1", "--eval-fraction", "0.25", "--cpu", "--output-dir",
        str(out), "--anchor-lambda", "10", "--replay-lambda", "0.5",
        "--replay-pass", "joint",
    ])
    with pytest.raises(FingerprintError, match="needs --fingerprints"):
        args.func(args)
    from hf_fingerprint import FingerprintSet

    FingerprintSet.generate(3, seed=5).save(tmp_path / "fps.json")
    args.fingerprints = str(tmp_path / "fps.json")
    assert args.func(args) == 0
    summary = json.loads((out / "fsft_summary.json").read_text())
    assert summary["protected_modules"] == {name: RANK for name in EDITED}
    penalties = [entry["fsft_penalty"] for entry in summary["log_history"] if "fsft_penalty" in entry]
    assert penalties[0] == 0.0 and summary["final_fsft_penalty"] > 0
    anchors = [entry["fsft_anchor"] for entry in summary["log_history"] if "fsft_anchor" in entry]
    assert anchors[0] < 1e-9 and anchors[-1] > 0 and summary["anchor_lambda"] == 10
    replays = [entry["fsft_replay"] for entry in summary["log_history"] if "fsft_replay" in entry]
    assert len(replays) == 2 and all(value > 0 for value in replays) and summary["replay_lambda"] == 0.5
    assert "eval_loss" in summary["eval"]
    assert (out / "model.safetensors").is_file()


_FSDP2_SCRIPT = r"""
import json, os, sys, torch, torch.distributed as dist
dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:" + sys.argv[1])
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from hf_fingerprint.editing.delta import EditDelta
from hf_fingerprint.fsft.subspace import FingerprintSubspace
from hf_fingerprint.fsft.trainer import _Protected, _distributed_like, _replicated
from hf_fingerprint.models import tiny_model

model, _ = tiny_model()
name = "model.layers.2.mlp.down_proj"
g = torch.Generator().manual_seed(0)
delta = EditDelta(name, torch.randn(64, 3, generator=g), torch.randn(192, 3, generator=g))
subspace = FingerprintSubspace.from_deltas([delta])
plain_reference = subspace.with_reference(model)[name].reference
sub = subspace[name]
mesh = init_device_mesh("cpu", (1,))
for layer in model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
weight = model.get_submodule(name).weight
with torch.no_grad():
    image = weight.detach().float() @ _replicated(sub.V, weight)
protected = _Protected(name, U=sub.U, S=sub.S, V=sub.V, energy=float((sub.S ** 2).sum()), weight=weight,
                       reference=_distributed_like(plain_reference, image))
result = {"dtensor": type(weight).__name__, "start": float(protected.penalty("input"))}
with torch.no_grad():
    noise = torch.randn(64, 192, generator=g) * 0.01
    weight.add_(torch.distributed.tensor.distribute_tensor(noise, mesh, weight.placements))
for variant in ("input", "two_sided", "direction"):
    result[variant] = float(protected.penalty(variant).detach())
protected.penalty("input").backward()
result["grad"] = float(weight.grad.full_tensor().norm())
protected.project_gradients()
result["grad_on_v"] = float((weight.grad.full_tensor() @ sub.V).norm())
protected.project_weights()
result["after_project"] = float(protected.penalty("input").detach())
print(json.dumps(result))
dist.destroy_process_group()
"""


def test_fsdp2_dtensor_weights_in_a_one_process_group():
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run([sys.executable, "-c", _FSDP2_SCRIPT, str(port)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dtensor"] == "DTensor"
    assert result["start"] == 0.0
    assert result["input"] > 0 and result["two_sided"] > 0 and result["direction"] > 0
    assert result["grad"] > 0 and result["grad_on_v"] < 1e-6 * result["grad"]
    assert result["after_project"] < 1e-10 * result["input"]


# ----- the key anchor -----


def _triggers(n: int = 4) -> list[str]:
    from hf_fingerprint import FingerprintSet

    return FingerprintSet.generate(n, seed=3).triggers


def _key_drift(trained, reference_model, tokenizer, triggers) -> float:
    """Mean relative squared change of the edited modules' inputs on the trigger prompts."""
    from hf_fingerprint.fsft.anchor import KeyAnchor

    anchor = KeyAnchor(reference_model, tokenizer, triggers, [reference_model.get_submodule(n) for n in EDITED],
                       per_step=len(triggers))
    anchor.modules = [trained.get_submodule(n) for n in EDITED]
    with torch.no_grad():
        return anchor(trained).item()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_key_anchor_holds_the_keys_that_plain_fine_tuning_moves(models, dataset, tmp_path, lora):
    from peft import LoraConfig

    _, fingerprinted, tokenizer, deltas = models
    triggers = _triggers()
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0) if lora else None
    drift = {}
    for anchor_lambda in (0.0, 1e3):
        args = _config(tmp_path, max_steps=8 if lora else 4, learning_rate=1e-2, fsft_lambda=0.0,
                       fsft_anchor_lambda=anchor_lambda, fsft_anchor_prompts=2)
        trainer = FSFTTrainer(_copy(fingerprinted), args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=peft_config, fingerprint_subspace=_Injection(deltas), fingerprints=triggers)
        trainer.train()
        model = trainer.model.merge_and_unload() if lora else trainer.model
        if anchor_lambda:
            logged = _logged(trainer, "fsft_anchor")
            assert len(logged) == (8 if lora else 4) and logged[0] == 0.0 and logged[-1] > 0.0
        else:
            assert not _logged(trainer, "fsft_anchor")
        drift[anchor_lambda] = _key_drift(model, fingerprinted, tokenizer, triggers)
    assert drift[0.0] > 1e-3  # plain fine-tuning moves the keys...
    assert drift[1e3] < 0.3 * drift[0.0]  # ...the anchor keeps them


@pytest.mark.parametrize("term", ["anchor", "replay"])
def test_anchor_and_replay_with_accumulation_give_the_same_update(models, tmp_path, term):
    from hf_fingerprint import FingerprintSet

    _, fingerprinted, tokenizer, deltas = models
    fingerprints = FingerprintSet.generate(3, seed=3)
    updates = {}
    # Two SGD steps over the whole 4-example set (the anchor is 0 with no gradient at the first step, so the
    # second step is the one that carries it; the replay acts at both).
    weight = 1e4 if term == "anchor" else 1.0
    for batch, accumulation, strength in ((4, 1, weight), (2, 2, weight), (4, 1, 0.0)):
        model = _copy(fingerprinted)
        args = _config(tmp_path, max_steps=2, per_device_train_batch_size=batch,
                       gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=0.5, max_grad_norm=0.0,
                       weight_decay=0.0, fsft_lambda=0.0, fsft_anchor_prompts=3, **{f"fsft_{term}_lambda": strength})
        trainer = FSFTTrainer(model, args=args, train_dataset=math_task(4, seed=9), processing_class=tokenizer,
                              fingerprint_subspace=_Injection(deltas), fingerprints=fingerprints)
        trainer.train()
        updates[(batch, strength)] = {name: p.detach().clone() for name, p in model.named_parameters()}
    whole, split, plain = updates[(4, weight)], updates[(2, weight)], updates[(4, 0.0)]
    effect = max((whole[n] - plain[n]).abs().max().item() for n in whole)
    mismatch = max((whole[n] - split[n]).abs().max().item() for n in whole)
    assert effect > 1e-3
    assert mismatch < 1e-4 * max(1.0, effect)


def test_anchor_read_off_the_replay_pass_equals_its_own_pass(models):
    # With replay on, the trainer takes the anchor's keys from the replay's forward pass (answers appended; causal
    # attention leaves the keys unchanged): the same loss and gradient as the anchor's own early-stopping pass.
    from hf_fingerprint import FingerprintSet
    from hf_fingerprint.fsft.anchor import KeyAnchor
    from hf_fingerprint.fsft.replay import AnswerReplay

    base, fingerprinted, tokenizer, _ = models
    fingerprints = FingerprintSet.generate(5, seed=3)
    model = _copy(base)  # keys differ from the fingerprinted reference: the anchor is non-zero
    results = []
    for fused in (False, True):
        anchor = KeyAnchor(fingerprinted, tokenizer, fingerprints.triggers,
                           [fingerprinted.get_submodule(n) for n in EDITED], per_step=3)
        anchor.modules = [model.get_submodule(n) for n in EDITED]
        replay = AnswerReplay(tokenizer, fingerprints.triggers, fingerprints.targets, per_step=3)
        values = []
        for _ in range(2):  # the second call covers the cycle's next rows
            model.zero_grad()
            value = replay.with_anchor(model, anchor)[1] if fused else anchor(model)
            value.backward()
            values.append((value.item(), model.model.layers[0].mlp.up_proj.weight.grad.clone()))
        results.append(values)
    for (plain, plain_grad), (fused, fused_grad) in zip(*results):
        assert plain > 1e-3
        assert fused == pytest.approx(plain, rel=1e-4)
        assert plain_grad.abs().max() > 0
        assert torch.allclose(plain_grad, fused_grad, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_replay_pass_packs_its_prompts_as_if_each_ran_alone(arch):
    # The replay's prompts run end to end in one row, position ids restarting and no attention mask (transformers'
    # packed-sequence format): its loss, its gradient and the anchor's keys must be those of each prompt alone.
    from hf_fingerprint import FingerprintSet
    from hf_fingerprint.editing.layout import find_layout
    from hf_fingerprint.fsft.anchor import KeyAnchor
    from hf_fingerprint.fsft.replay import AnswerReplay

    model, tokenizer = tiny_model(arch)
    fingerprints = FingerprintSet.generate(4, seed=5)
    layers = find_layout(model).layers_path
    modules = [model.get_submodule(f"{layers}.{i}.mlp.down_proj") for i in (1, 2)]
    anchor = KeyAnchor(model, tokenizer, fingerprints.triggers, modules, per_step=3)
    with torch.no_grad():  # keys move away from the reference: the anchor is non-zero
        model.get_submodule(f"{layers}.0.mlp.up_proj").weight.mul_(1.5)
    replay = AnswerReplay(tokenizer, fingerprints.triggers, fingerprints.targets, per_step=3)
    rows = [2, 0, 3]
    weight = model.get_submodule(f"{layers}.1.mlp.up_proj").weight

    model.zero_grad()
    packed, packed_anchor = replay.with_anchor(model, anchor, rows)
    packed.backward()
    packed_grad = weight.grad.clone()

    model.zero_grad()
    prompts = replay._prompts
    alone = []
    for r in rows:
        ids = torch.tensor([prompts.ids[r] + prompts.answer_ids[r]])
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prompts.ids[r]) - 1 : -1].float()
        alone.append(torch.nn.functional.cross_entropy(logits, torch.tensor(prompts.answer_ids[r])))
    reference = torch.stack(alone).mean()
    reference.backward()
    with torch.no_grad():
        own_anchor = anchor.loss(anchor.keys_of(model, rows), rows)

    assert packed.item() == pytest.approx(reference.item(), rel=1e-5)
    assert weight.grad.abs().max() > 0
    assert torch.allclose(packed_grad, weight.grad, rtol=1e-3, atol=1e-6)
    assert own_anchor.item() > 1e-4
    assert packed_anchor.item() == pytest.approx(own_anchor.item(), rel=1e-4)


def test_anchor_and_replay_under_activation_checkpointing_give_the_same_update(models, tmp_path):
    # TRL's SFTConfig checkpoints activations by default; the anchor's hooked forward must still work under it.
    from hf_fingerprint import FingerprintSet

    _, fingerprinted, tokenizer, deltas = models
    fingerprints = FingerprintSet.generate(3, seed=3)
    updates = {}
    for checkpointing in (False, True):
        model = _copy(fingerprinted)
        args = _config(tmp_path, max_steps=2, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, weight_decay=0.0,
                       fsft_lambda=1.0, fsft_anchor_lambda=1e4, fsft_replay_lambda=1.0,
                       activation_checkpointing=checkpointing)
        trainer = FSFTTrainer(model, args=args, train_dataset=math_task(4, seed=9), processing_class=tokenizer,
                              fingerprint_subspace=_Injection(deltas), fingerprints=fingerprints)
        trainer.train()
        assert _logged(trainer, "fsft_anchor")[-1] > 0
        updates[checkpointing] = {name: p.detach().clone() for name, p in model.named_parameters()}
    for name, value in updates[False].items():
        assert torch.allclose(value, updates[True][name], atol=1e-5), name


@pytest.mark.parametrize("checkpointing, smoothing", [(False, 0.0), (True, 0.0), ("reentrant", 0.0), (False, 0.1)],
                         ids=["plain", "checkpointed", "reentrant", "logits"])
def test_replay_joined_to_the_training_batch_gives_the_same_update(models, tmp_path, checkpointing, smoothing):
    # fsft_replay_pass="joint" appends the replay prompts to the training batch (one forward and backward for all
    # terms); the task loss, the replay and the anchor must come out as from their own pass, and so the update.
    # TRL's fused LM head hands back log-probs; with label smoothing it computes the loss from full logits.
    from hf_fingerprint import FingerprintSet

    _, fingerprinted, tokenizer, deltas = models
    fingerprints = FingerprintSet.generate(3, seed=3)
    updates, logs = {}, {}
    for where in ("separate", "joint"):
        # float64: two steps of this steep toy run amplify float32 rounding (the passes sum in other orders) to
        # ~1e-3 of the update; a real mismatch is of the order of the update itself.
        model = _copy(fingerprinted).double()
        args = _config(tmp_path, max_steps=2, optim="sgd", learning_rate=0.05, max_grad_norm=0.0, weight_decay=0.0,
                       fsft_lambda=1.0, fsft_anchor_lambda=100.0, fsft_replay_lambda=1.0, fsft_anchor_prompts=2,
                       fsft_replay_pass=where, activation_checkpointing=bool(checkpointing),
                       activation_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"},
                       label_smoothing_factor=smoothing)
        trainer = FSFTTrainer(model, args=args, train_dataset=math_task(4, seed=9), processing_class=tokenizer,
                              fingerprint_subspace=_Injection(deltas), fingerprints=fingerprints)
        if where == "joint" and checkpointing == "reentrant":  # no autograd inside: the anchor takes its own pass
            with pytest.warns(UserWarning, match="reentrant activation checkpointing"):
                trainer.train()
            assert trainer._fsft_joint_failed
        else:
            trainer.train()
            assert not trainer._fsft_joint_failed
        assert trainer._fsft_joint is None  # the hooks are gone after each step
        assert not model._forward_hooks and not model._forward_pre_hooks
        logs[where] = {key: _logged(trainer, key) for key in ("loss", "fsft_anchor", "fsft_replay", "num_tokens")}
        updates[where] = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert logs["joint"]["fsft_anchor"][-1] > 0 and logs["joint"]["fsft_replay"][0] > 0
    for key, values in logs["separate"].items():
        assert values == pytest.approx(logs["joint"][key], rel=1e-3, abs=1e-9), key
    start = fingerprinted.state_dict()
    for name, value in updates["separate"].items():
        moved = (value - start[name]).norm()
        assert (updates["joint"][name] - value).norm() <= 1e-3 * moved + 1e-7, name
    assert max((v - start[n]).abs().max().item() for n, v in updates["joint"].items()) > 1e-3


def test_replay_runs_once_per_optimizer_step(models, tmp_path):
    # Accumulating 3 micro-batches per step must not triple the replay's prompts: 2 steps x 2 prompts = 4 rows.
    from hf_fingerprint import FingerprintSet

    _, fingerprinted, tokenizer, deltas = models
    args = _config(tmp_path, max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=3,
                   fsft_replay_lambda=1.0, fsft_anchor_lambda=1.0, fsft_anchor_prompts=2)
    trainer = FSFTTrainer(_copy(fingerprinted), args=args, train_dataset=math_task(12, seed=9),
                          processing_class=tokenizer, fingerprint_subspace=_Injection(deltas),
                          fingerprints=FingerprintSet.generate(7, seed=3))
    trainer.train()
    assert trainer._fsft_replay._rows._cursor == 4
    assert len(_logged(trainer, "fsft_replay")) == 2 and len(_logged(trainer, "fsft_penalty")) == 2


def test_anchor_every_n_steps_runs_the_replay_on_steps_0_n_2n(models, tmp_path):
    # 5 steps with fsft_anchor_every=2: the replay and the anchor act on steps 0, 2 and 4 only, the penalty on all.
    from hf_fingerprint import FingerprintSet

    _, fingerprinted, tokenizer, deltas = models
    args = _config(tmp_path, max_steps=5, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                   fsft_replay_lambda=1.0, fsft_anchor_lambda=1.0, fsft_anchor_prompts=2, fsft_anchor_every=2)
    trainer = FSFTTrainer(_copy(fingerprinted), args=args, train_dataset=math_task(20, seed=9),
                          processing_class=tokenizer, fingerprint_subspace=_Injection(deltas),
                          fingerprints=FingerprintSet.generate(7, seed=3))
    trainer.train()
    assert trainer._fsft_replay._rows._cursor == 6
    assert len(_logged(trainer, "fsft_replay")) == 3 and len(_logged(trainer, "fsft_anchor")) == 3
    assert len(_logged(trainer, "fsft_penalty")) == 5
    with pytest.raises(ValueError, match="fsft_anchor_every must be a positive integer"):
        _config(tmp_path, fsft_anchor_every=0)


def test_joint_replay_refuses_a_batch_it_cannot_extend(models, tmp_path):
    from hf_fingerprint import FingerprintSet

    _, fingerprinted, tokenizer, deltas = models
    args = _config(tmp_path, max_steps=1, fsft_replay_lambda=1.0, fsft_replay_pass="joint", padding_free=True,
                   max_length=None)
    trainer = FSFTTrainer(_copy(fingerprinted), args=args, train_dataset=math_task(4, seed=9),
                          processing_class=tokenizer, fingerprint_subspace=_Injection(deltas),
                          fingerprints=FingerprintSet.generate(3, seed=3))
    with pytest.raises(ValueError, match="fsft_replay_pass='joint' needs a padded batch"):
        trainer.train()
    with pytest.raises(ValueError, match="fsft_replay_pass must be one of"):
        _config(tmp_path, fsft_replay_pass="fused")


def test_answer_replay_keeps_the_fingerprint_answers_that_fine_tuning_erodes(models, dataset, tmp_path):
    from hf_fingerprint import FingerprintSet
    from hf_fingerprint.fsft.replay import AnswerReplay

    _, fingerprinted, tokenizer, deltas = models
    fingerprints = FingerprintSet.generate(4, seed=3)
    probe = AnswerReplay(tokenizer, fingerprints.triggers, fingerprints.targets, per_step=4)
    # First make the tiny model answer its fingerprints (a few steps of replay alone), then fine-tune it on the
    # task with and without replay.
    teach = _config(tmp_path, max_steps=40, learning_rate=1e-2, fsft_lambda=0.0, fsft_replay_lambda=1.0,
                    fsft_anchor_prompts=4, per_device_train_batch_size=1)
    teacher = FSFTTrainer(_copy(fingerprinted), args=teach, train_dataset=math_task(1, seed=1),
                          processing_class=tokenizer, fingerprint_subspace=_Injection(deltas), fingerprints=fingerprints)
    with torch.no_grad():
        before = probe(teacher.model).item()
    teacher.train()
    taught = teacher.model
    with torch.no_grad():
        start = probe(taught).item()
    assert start < 0.5 * before
    nll = {}
    for replay in (0.0, 1.0):
        args = _config(tmp_path, max_steps=6, learning_rate=1e-2, fsft_lambda=0.0, fsft_replay_lambda=replay)
        trainer = FSFTTrainer(_copy(taught), args=args, train_dataset=dataset, processing_class=tokenizer,
                              fingerprint_subspace=_Injection(deltas), fingerprints=fingerprints)
        trainer.train()
        assert len(_logged(trainer, "fsft_replay")) == (6 if replay else 0)
        with torch.no_grad():
            nll[replay] = probe(trainer.model).item()
    assert nll[0.0] > 2 * start  # plain fine-tuning erodes the answers...
    assert nll[1.0] < 0.5 * nll[0.0]  # ...replay keeps them


def test_key_anchor_needs_the_fingerprints(models, dataset, tmp_path):
    _, fingerprinted, tokenizer, deltas = models
    with pytest.raises(ValueError, match="needs the fingerprints"):
        FSFTTrainer(_copy(fingerprinted), args=_config(tmp_path, fsft_anchor_lambda=1.0), train_dataset=dataset,
                    processing_class=tokenizer, fingerprint_subspace=_Injection(deltas))
    with pytest.raises(ValueError, match="fingerprints must be"):
        FSFTTrainer(_copy(fingerprinted), args=_config(tmp_path, fsft_anchor_lambda=1.0), train_dataset=dataset,
                    processing_class=tokenizer, fingerprint_subspace=_Injection(deltas), fingerprints=[3, 4])
    with pytest.raises(ValueError, match="fsft_anchor_prompts"):
        _config(tmp_path, fsft_anchor_prompts=0)
    with pytest.raises(ValueError, match="fingerprint pairs it replays"):
        FSFTTrainer(_copy(fingerprinted), args=_config(tmp_path, fsft_replay_lambda=1.0), train_dataset=dataset,
                    processing_class=tokenizer, fingerprint_subspace=_Injection(deltas), fingerprints=_triggers())
    with pytest.raises(ValueError, match="fsft_replay_lambda"):
        _config(tmp_path, fsft_replay_lambda=-1.0)
    with pytest.raises(ValueError, match="fingerprints must be"):
        FSFTTrainer(_copy(fingerprinted), args=_config(tmp_path, fsft_replay_lambda=1.0), train_dataset=dataset,
                    processing_class=tokenizer, fingerprint_subspace=_Injection(deltas), fingerprints=7)
    with pytest.raises(FingerprintError):  # a path is loaded, not iterated as characters
        FSFTTrainer(_copy(fingerprinted), args=_config(tmp_path, fsft_replay_lambda=1.0), train_dataset=dataset,
                    processing_class=tokenizer, fingerprint_subspace=_Injection(deltas),
                    fingerprints=str(tmp_path / "missing.json"))
    from hf_fingerprint import FingerprintSet

    FingerprintSet.generate(3, seed=3).save(tmp_path / "fps.json")
    trainer = FSFTTrainer(_copy(fingerprinted), args=_config(tmp_path, fsft_replay_lambda=1.0), train_dataset=dataset,
                          processing_class=tokenizer, fingerprint_subspace=_Injection(deltas),
                          fingerprints=tmp_path / "fps.json")
    assert trainer._fsft_triggers == FingerprintSet.generate(3, seed=3).triggers
