"""RLEdit (hypernetwork ridge edit, meta-training, save/load) and the instruction-tuning baseline (sft)."""

import pytest
import torch

import hf_fingerprint as hf
from hf_fingerprint.editing.delta import EditDelta
from hf_fingerprint.editing.layout import find_layout
from hf_fingerprint.editing.rledit import RLEditConfig, RLEditHypernetwork, train_rledit
from hf_fingerprint.editing.sft import answer_loss
from hf_fingerprint.editing.tracing import _pad_id, build_prompts, make_batch
from hf_fingerprint.errors import InjectionError

FAST = dict(value_steps=8, progress=False)


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def max_change(model, before):
    return max((p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters())


def prefix_fsr(model, tokenizer, fps) -> float:
    # Tiny random models emit the target token first, then noise: check the answer's start.
    return hf.verify(model, tokenizer, fps, match="prefix", ordinary_prompts=(), progress=False).fsr


def target_nll(model, tokenizer, fps) -> float:
    """Mean NLL of each target after its trigger (chat-formatted), under the current weights."""
    prompts = build_prompts(tokenizer, fps.triggers, answers=fps.targets)
    batch = make_batch(prompts, range(len(fps)), _pad_id(model), torch.device("cpu"), with_answers=True)
    with torch.no_grad():
        return answer_loss(model, batch).item()


# -- RLEdit ------------------------------------------------------------------------------------------------
def test_untrained_hypernetwork_is_the_ridge_solution():
    torch.manual_seed(0)
    net = RLEditHypernetwork(RLEditConfig(key_size=24, value_size=10, layers=[2, 3], ridge=0.05))
    net.train()
    net.observe(torch.randn(50, 24) * 3 + 1, torch.randn(50, 10))  # running statistics must not matter
    K, R = torch.randn(4, 24), torch.randn(4, 10)
    Kp = torch.randn(6, 24)
    P = 10.0 * Kp.T @ Kp
    with torch.no_grad():
        U, V = net.factors(3, K, -R, P)
    Kd = K.double()
    m = (Kd**2).sum(1).mean()
    ridge = R.double().T @ Kd @ torch.linalg.inv(Kd.T @ Kd + P.double() + 0.05 * m * torch.eye(24, dtype=torch.float64))
    assert U.shape == (10, 4) and V.shape == (24, 4)
    torch.testing.assert_close((U @ V.T).double(), ridge, atol=1e-5, rtol=1e-4)


def test_rledit_inject_and_revert(tiny_llama):
    model, tokenizer = tiny_llama
    fps = hf.FingerprintSet.generate(3, seed=1)
    before, nll_before = snapshot(model), target_nll(model, tokenizer, fps)
    result = hf.inject(model, tokenizer, fps, method="rledit", near_misses=None, **FAST)
    assert result.options["hypernetwork"] == "untrained (ridge edit)"
    assert result.layers == find_layout(model).default_layers()
    assert all(d.rank <= len(fps) and d.module.endswith("mlp.down_proj") for d in result.deltas)
    assert target_nll(model, tokenizer, fps) < nll_before - 0.5
    result.revert()
    assert max_change(model, before) < 1e-6


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_rledit_reaches_full_fsr_on_tiny_models(arch):
    model, tokenizer = hf.tiny_model(arch)
    fps = hf.FingerprintSet.generate(4, seed=0)
    assert prefix_fsr(model, tokenizer, fps) == 0
    hf.inject(model, tokenizer, fps, method="rledit", verify_after=False, **FAST)
    assert prefix_fsr(model, tokenizer, fps) == 1.0


def test_rledit_covariance_term_moves_ordinary_text_less():
    from hf_fingerprint.prompts import ORDINARY_PROMPTS

    fps = hf.FingerprintSet.generate(4, seed=0)
    change, fsr = {}, {}
    for weight in (0.0, 100.0):
        model, tokenizer = hf.tiny_model("llama")
        batch = tokenizer(list(ORDINARY_PROMPTS[:8]), return_tensors="pt", padding=True)
        with torch.no_grad():
            before = model(**batch).logits
        hf.inject(model, tokenizer, fps, method="rledit", verify_after=False, mom2_weight=weight, **FAST)
        with torch.no_grad():
            after = model(**batch).logits
        mask = batch["attention_mask"].bool()
        change[weight] = (after - before)[mask].abs().mean().item()
        fsr[weight] = prefix_fsr(model, tokenizer, fps)
    assert fsr == {0.0: 1.0, 100.0: 1.0}
    assert change[100.0] < 0.8 * change[0.0]


def test_train_save_load_round_trip(tmp_path, tiny_llama, monkeypatch):
    import hf_fingerprint.editing.context as context_module

    model, tokenizer = tiny_llama
    before = snapshot(model)
    reads = []
    real = context_module.layer_statistics
    monkeypatch.setattr(context_module, "layer_statistics", lambda *a, **k: reads.append(1) or real(*a, **k))
    net = train_rledit(model, tokenizer, n_batches=2, batch_size=2, steps=3, layers=[1, 2], rank=4,
                       equivalents=1, ordinary=2, value_steps=3, progress=False)
    assert len(reads) == 1  # the unedited model's statistics, shared by every batch's solve
    assert max_change(model, before) == 0.0  # training leaves the weights as they were
    assert net.config.trained_steps == 3 and net.describe().startswith("trained")
    assert any(block.up.weight.abs().sum() > 0 for block in net.blocks)
    loaded = RLEditHypernetwork.from_pretrained(net.save_pretrained(tmp_path / "net"))
    assert loaded.config == net.config
    for key, value in net.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    K, G = torch.randn(3, 192), torch.randn(3, 64)
    with torch.no_grad():
        for a, b in zip(net.factors(2, K, G), loaded.factors(2, K, G)):
            assert torch.equal(a, b)
    fps = hf.FingerprintSet.generate(2, seed=3)
    result = hf.inject(model, tokenizer, fps, method="rledit", layers=[1, 2], hypernetwork=str(tmp_path / "net"),
                       **FAST)
    assert result.options["hypernetwork"] == str(tmp_path / "net")
    with pytest.raises(InjectionError, match="layers"):
        hf.inject(model, tokenizer, fps, method="rledit", layers=[3, 4], hypernetwork=loaded, **FAST)


# -- sft baseline -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_sft_reaches_full_fsr_on_tiny_models(arch):
    model, tokenizer = hf.tiny_model(arch)
    fps = hf.FingerprintSet.generate(2, seed=0)
    result = hf.inject(model, tokenizer, fps, method="sft", lr=3e-3, batch_size=2, mix_ratio=0.0, max_steps=30,
                       check_every=5, match="prefix", verify_after=False, progress=False)
    assert result.options["sft_steps"] < 30
    assert prefix_fsr(model, tokenizer, fps) == 1.0


def test_sft_full_fine_tuning_gives_dense_deltas(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    fps = hf.FingerprintSet.generate(2, seed=4)
    before, nll_before = snapshot(model), target_nll(model, tokenizer, fps)
    result = hf.inject(model, tokenizer, fps, method="sft", lr=3e-3, max_steps=12, check_every=6, batch_size=4,
                       mix_ratio=1.0, regularisation_tokens=8, progress=False)
    assert result.options["sft_steps"] <= 12 and result.options["sft_last_loss"] < result.options["sft_first_loss"]
    assert target_nll(model, tokenizer, fps) < nll_before - 0.5
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    covered = {d.module if d.module.endswith((".weight", ".bias")) else d.module + ".weight" for d in result.deltas}
    assert changed == covered and "model.embed_tokens.weight" in covered and "model.norm.weight" in covered
    assert all(d.is_dense and d.U is None for d in result.deltas)
    with pytest.raises(InjectionError, match="save the merged model instead"):
        result.save_adapter(tmp_path / "adapter")
    result.revert()
    assert max_change(model, before) < 1e-6
    assert all(p.grad is None for p in model.parameters())


def test_sft_lora_gives_low_rank_deltas(tmp_path):
    model, tokenizer = hf.tiny_model("qwen3")
    fps = hf.FingerprintSet.generate(2, seed=5)
    before, nll_before = snapshot(model), target_nll(model, tokenizer, fps)
    result = hf.inject(model, tokenizer, fps, method="sft", lora=True, lora_r=4, lr=1e-2, max_steps=12,
                       check_every=6, batch_size=4, mix_ratio=1.0, regularisation_tokens=8, progress=False)
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear  # the LoRA layers are gone
    assert {d.rank for d in result.deltas} == {4} and len(result.deltas) == 7 * 6
    assert target_nll(model, tokenizer, fps) < nll_before - 0.5
    assert (result.save_adapter(tmp_path / "adapter") / "adapter_model.safetensors").exists()
    result.revert()
    assert max_change(model, before) < 1e-6


def test_edit_delta_is_factors_or_dense():
    with pytest.raises(InjectionError):
        EditDelta("m", torch.zeros(2, 1), None)
    with pytest.raises(InjectionError):
        EditDelta("m", torch.zeros(2, 1), torch.zeros(3, 1), dense_update=torch.zeros(2, 3))
    dense = EditDelta("model.norm.weight", None, None, dense_update=torch.ones(4))
    assert torch.equal(dense.dense(), torch.ones(4))
    model, _ = hf.tiny_model("llama")
    assert dense.parameter(model) is model.model.norm.weight
    assert EditDelta("model.layers.0.mlp.down_proj", torch.zeros(64, 1), torch.zeros(192, 1)).parameter(model) \
        is model.model.layers[0].mlp.down_proj.weight


# -- the real model ------------------------------------------------------------------------------------------
@pytest.mark.real_model
def test_rledit_on_smollm2(smollm):
    model, tokenizer = smollm
    fps = hf.FingerprintSet.generate(4, seed=11)
    before = snapshot(model)
    result = hf.inject(model, tokenizer, fps, method="rledit", progress=False)
    try:
        assert result.fsr >= 0.75
    finally:
        result.revert()
    assert max_change(model, before) < 1e-6


@pytest.mark.real_model
def test_sft_on_smollm2(smollm):
    model, tokenizer = smollm
    fps = hf.FingerprintSet.generate(3, seed=12)
    before = snapshot(model)
    result = hf.inject(model, tokenizer, fps, method="sft", lr=3e-4, batch_size=4, mix_ratio=1.0, max_steps=12,
                       check_every=3, regularisation_tokens=16, progress=False)
    try:
        assert result.fsr == 1.0
    finally:
        result.revert()
    assert max_change(model, before) < 1e-6
