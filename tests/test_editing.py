import json

import pytest
import torch

from hf_fingerprint import (
    FingerprintSet,
    InjectionError,
    UnsupportedArchitectureError,
    get_fingerprint_model,
    inject,
    tiny_model,
    verify,
)
from hf_fingerprint.editing.layout import find_layout, get_module


def fsr(model, tokenizer, fps):
    # Tiny random models emit the target token first, then noise: check the answer's start.
    return verify(model, tokenizer, fps, match="prefix", ordinary_prompts=(), progress=False).fsr


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Statistics of the tiny models are computed once for this module, in a folder of its own."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv("HF_FINGERPRINT_CACHE", str(folder))
        yield folder


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("method", ["memit", "alphaedit", "rome"])
def test_every_editor_reaches_full_fsr_and_reverts(arch, method):
    model, tokenizer = tiny_model(arch)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    fps = FingerprintSet.generate(4, seed=0)
    assert fsr(model, tokenizer, fps) == 0
    result = inject(model, tokenizer, fps, method=method, progress=False)
    assert fsr(model, tokenizer, fps) == 1.0
    # the default key position: random attention carries nothing from the trigger, so every key fell back
    assert result.options["key_position"] == "auto" and result.options["trigger_keys"] == 0
    assert result.method == method and result.seconds > 0 and result.peak_memory_bytes > 0
    assert all(d.rank <= 4 and d.module.endswith("mlp.down_proj") for d in result.deltas)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, original[n])}
    assert changed == {d.module + ".weight" for d in result.deltas}
    result.revert()
    for n, p in model.named_parameters():
        assert torch.allclose(p, original[n], atol=1e-6), n
    with pytest.raises(InjectionError, match="already reverted"):
        result.revert()


def test_gemma3_is_supported():
    model, tokenizer = tiny_model("gemma3")
    fps = FingerprintSet.generate(3, seed=1)
    inject(model, tokenizer, fps, method="alphaedit", progress=False)
    assert fsr(model, tokenizer, fps) == 1.0


def test_adapter_round_trip_with_stock_peft(tmp_path):
    from peft import PeftModel

    model, tokenizer = tiny_model("llama")
    fps = FingerprintSet.generate(4, seed=2)
    result = inject(model, tokenizer, fps, method="memit", progress=False)
    result.save_adapter(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "fingerprint_adapter.json"} <= files
    for path in (tmp_path / "adapter").iterdir():
        data = path.read_bytes()
        assert all(t.encode() not in data for t in fps.triggers) and all(t.encode() not in data for t in fps.targets)

    base, _ = tiny_model("llama")
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    ids = tokenizer("hello there", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**ids).logits, model(**ids).logits, atol=1e-5)
    assert fsr(loaded, tokenizer, fps) == 1.0
    with loaded.disable_adapter():
        assert fsr(loaded, tokenizer, fps) == 0
    merged = loaded.merge_and_unload()
    assert fsr(merged, tokenizer, fps) == 1.0


def test_get_fingerprint_model_keeps_base_weights():
    model, tokenizer = tiny_model("qwen3")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fps = FingerprintSet.generate(3, seed=3)
    peft_model = get_fingerprint_model(model, tokenizer, fps, method="alphaedit", progress=False)
    assert fsr(peft_model, tokenizer, fps) == 1.0
    base = peft_model.get_base_model()
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.allclose(param, before[key], atol=1e-6), name


def test_bad_input_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model, tokenizer = tiny_model("llama")
    fps = FingerprintSet.generate(2, seed=0)
    with pytest.raises(InjectionError, match="Unknown method"):
        inject(model, tokenizer, fps, method="magic")
    with pytest.raises(UnsupportedArchitectureError, match="layers"):
        inject(model, tokenizer, fps, layers=[99])
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer)))
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        inject(gpt2, tokenizer, fps)


def test_misspelt_or_foreign_options_are_refused_before_any_edit():
    model, tokenizer = tiny_model("llama")
    fps = FingerprintSet.generate(2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InjectionError, match="'mom2_wieght' \\(did you mean 'mom2_weight'\\?\\)"):
        inject(model, tokenizer, fps, method="memit", mom2_wieght=3)
    with pytest.raises(InjectionError, match="'nullspace_threshold'"):  # AlphaEdit's, not MEMIT's
        inject(model, tokenizer, fps, method="memit", nullspace_threshold=0.5)
    with pytest.raises(InjectionError, match="'value_steps'"):  # sft optimises no target values
        inject(model, tokenizer, fps, method="sft", value_steps=10)
    with pytest.raises(InjectionError, match="'lora'"):
        inject(model, tokenizer, fps, method="rome", lora=True)
    with pytest.raises(TypeError, match="near_misses takes a list"):  # one string used to become one key per character
        inject(model, tokenizer, fps, near_misses="a look-alike of a trigger")
    for method in ("rome", "sft"):  # near misses they would silently ignore
        with pytest.raises(InjectionError, match="does not preserve near misses"):
            inject(model, tokenizer, fps, method=method, near_misses="auto")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_default_layers_follow_depth():
    model, _ = tiny_model("llama")
    layout = find_layout(model)
    assert layout.num_layers == 6 and layout.default_layers() == [1, 2]
    from hf_fingerprint.editing.layout import ModelLayout

    assert ModelLayout("model.layers", 30, 576, 1536).default_layers() == [6, 7, 8, 9, 10]
    assert ModelLayout("model.layers", 28, 3072, 8192).default_layers() == [6, 7, 8, 9, 10]


def test_covariance_is_cached_on_disk(tmp_path, monkeypatch):
    from hf_fingerprint.editing.covariance import layer_statistics

    monkeypatch.setenv("HF_FINGERPRINT_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_model("llama")
    layout = find_layout(model)
    first = layer_statistics(model, tokenizer, layout, [1, 2], max_tokens=2000, progress=False)
    files = list((tmp_path / "cache" / "stats").rglob("layer*.pt"))
    assert len(files) == 2
    second = layer_statistics(model, tokenizer, layout, [1, 2], max_tokens=2000, progress=False)
    assert torch.equal(first[1], second[1])
    assert torch.allclose(first[1], first[1].T) and torch.linalg.eigvalsh(first[1]).min() > -1e-5
    other = layer_statistics(model, tokenizer, layout, [1], corpus=["some other text"] * 4, progress=False)
    assert not torch.equal(other[1], first[1])


def test_null_space_basis_is_cached_beside_the_statistics(tmp_path, monkeypatch):
    from hf_fingerprint.editing.alphaedit import range_basis

    monkeypatch.setenv("HF_FINGERPRINT_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_model("llama")
    fps = FingerprintSet.generate(3, seed=2)
    first = inject(model, tokenizer, fps, method="alphaedit", progress=False)
    stats = {int(f.stem[5:]): f for f in (tmp_path / "cache" / "stats").rglob("layer*.pt")}
    bases = {int(f.stem.split("layer")[1]): f for f in (tmp_path / "cache" / "stats").rglob("range0.5-layer*.pt")}
    assert sorted(bases) == sorted(stats) == first.layers
    for layer, path in bases.items():
        B = torch.load(path)
        C = torch.load(stats[layer])
        assert torch.allclose(B, range_basis(C, 0.5))
        # B spans the large-eigenvalue directions: I - B B^T removes them from C
        P = torch.eye(B.shape[0]) - B @ B.T
        assert (P @ C @ P).norm() < 0.5 * C.norm()
    first.revert()
    second = inject(model, tokenizer, fps, method="alphaedit", progress=False)  # read from disk this time
    for a, b in zip(first.deltas, second.deltas):
        assert torch.allclose(a.dense(), b.dense(), atol=1e-5)
    second.revert()
    # a damaged cache file is recomputed and replaced, not a crash
    damaged = bases[first.layers[0]]
    damaged.write_bytes(b"not a tensor")
    stats[first.layers[1]].write_bytes(b"")
    third = inject(model, tokenizer, fps, method="alphaedit", progress=False)
    for a, b in zip(first.deltas, third.deltas):
        assert torch.allclose(a.dense(), b.dense(), atol=1e-5)
    assert torch.allclose(torch.load(damaged), range_basis(torch.load(stats[first.layers[0]]), 0.5))
    assert torch.load(stats[first.layers[1]]).shape == torch.load(stats[first.layers[0]]).shape


def test_inject_command(tmp_path):
    import subprocess
    import sys

    model, tokenizer = tiny_model("llama")
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    fps = FingerprintSet.generate(3, seed=4)
    fps.save(tmp_path / "fps.json")
    result = subprocess.run(
        [sys.executable, "-m", "hf_fingerprint.cli", "inject", str(tmp_path / "base"), str(tmp_path / "fps.json"),
         "-o", str(tmp_path / "out"), "--method", "memit", "--option", "value_steps=30"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "injection.json").read_text())
    assert summary["method"] == "memit" and summary["fingerprints"] == 3
    from hf_fingerprint import load_model

    edited, edited_tok = load_model(tmp_path / "out" / "model")
    assert fsr(edited, edited_tok, fps) == 1.0
    assert all(t not in result.stdout + result.stderr for t in fps.triggers)


@pytest.fixture()
def smollm_copy(smollm, monkeypatch):
    """A copy of the embedded model to edit, with the statistics cache shared with other real-model runs."""
    import copy

    monkeypatch.delenv("HF_FINGERPRINT_CACHE")
    model, tokenizer = smollm
    return copy.deepcopy(model), tokenizer


REAL_MODEL_SECRET = b"real-model test secret 0123456789"


@pytest.mark.real_model
def test_default_injection_on_smollm(smollm_copy):
    model, tokenizer = smollm_copy
    fps = FingerprintSet.generate(10, secret=REAL_MODEL_SECRET)
    result = inject(model, tokenizer, fps, progress=False)
    # Trigger keys persist through fine-tuning but realise fewer edits than last-token keys (80-90 % measured on
    # SmolLM2; misses are re-edited at the last token); "last" reaches 100 % and vanishes when fine-tuned.
    assert result.fsr >= 0.8
    assert result.options["trigger_keys"] >= 5  # a real model's attention carries the edit from the trigger
    report = verify(model, tokenizer, fps, progress=False)
    assert report.significant(1e-6)
    # inject returned the auto-key step's own check of the edited model: what a fresh verification says
    assert [o.matched for o in result.report.outcomes] == [o.matched for o in report.outcomes]
    result.revert()
    assert verify(model, tokenizer, fps, ordinary_prompts=(), progress=False).fsr == 0


@pytest.mark.real_model
def test_scrambled_trigger_ends_are_distinctive_on_smollm_and_scoring_picks_the_most(smollm_copy):
    from hf_fingerprint.editing import trigger_distinctiveness

    model, tokenizer = smollm_copy
    ordinary = ["What is the capital of France?", "Write a haiku about autumn.", "How do I sort a list in Python?",
                "Name three primary colors.", "Explain photosynthesis in one sentence."]
    fps = FingerprintSet.generate(4, secret=REAL_MODEL_SECRET, scoring_model=(model, tokenizer), candidates=4)
    drawn = FingerprintSet.generate(16, secret=REAL_MODEL_SECRET).triggers  # the same stream: 4 lists of 4
    scores = trigger_distinctiveness(model, tokenizer, ordinary + drawn, progress=False)
    ordinary_score, candidate_score = scores[:5], scores[5:].view(4, 4)
    assert fps.triggers == [drawn[4 * i + int(j)] for i, j in enumerate(candidate_score.argmax(1))]
    # Scrambled triggers end far from ordinary prompts (measured: ordinary ends 10-23k, seed-0 triggers' median
    # 58k, summed over the five edited layers), and the kept candidates further still.
    assert candidate_score[:, 0].median() > 1.5 * ordinary_score.median()
    assert candidate_score.max(1).values.median() > 3 * ordinary_score.median()
    assert fps.matches_secret(REAL_MODEL_SECRET)


def test_preserved_near_misses_are_passed_to_the_editor():
    model, tokenizer = tiny_model("llama")
    fps = FingerprintSet.generate(3, seed=5)
    near = fps.near_misses(2, seed=7)
    result = inject(model, tokenizer, fps, method="memit", near_misses=near, verify_after=False, progress=False)
    assert result.options["near_misses"] == len(near)
    auto = inject(tiny_model("llama")[0], tokenizer, fps, method="memit", near_misses="auto", verify_after=False,
                  progress=False)
    assert auto.options["near_misses"] == 3 * len(fps)


def test_several_key_positions_give_one_row_each():
    from hf_fingerprint.editing.tracing import build_prompts

    _, tokenizer = tiny_model("llama")
    texts = ["alpha beta", "gamma"]
    last = build_prompts(tokenizer, texts, answers=["x", "y"], key_position="last")
    trigger = build_prompts(tokenizer, texts, answers=["x", "y"], key_position="trigger")
    both = build_prompts(tokenizer, texts, answers=["x", "y"], key_position="last+trigger")
    assert both.ids == [last.ids[0], last.ids[0], last.ids[1], last.ids[1]]
    assert both.key_index == [last.key_index[0], trigger.key_index[0], last.key_index[1], trigger.key_index[1]]
    assert both.answer_ids == [last.answer_ids[0]] * 2 + [last.answer_ids[1]] * 2
    assert trigger.key_index[0] < last.key_index[0]
    for bad in ("first", "last+last", "last+"):
        with pytest.raises(InjectionError, match="key_position"):
            build_prompts(tokenizer, texts, key_position=bad)


@pytest.mark.parametrize("options", [dict(key_position="last+trigger"), dict(drift_samples=2, drift_scale=0.05)])
def test_redundant_and_drift_anticipating_edits_reach_full_fsr(options):
    model, tokenizer = tiny_model("llama")
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    fps = FingerprintSet.generate(4, seed=0)
    result = inject(model, tokenizer, fps, method="alphaedit", progress=False, **options)
    assert fsr(model, tokenizer, fps) == 1.0
    # rank: one key row per fingerprint and position (or drift sample) in every edited layer
    assert all(d.rank == 8 if "key_position" in options else d.rank == 12 for d in result.deltas)
    result.revert()  # the drift samples restored every weight they perturbed
    for name, p in model.named_parameters():
        assert torch.allclose(p, original[name], atol=1e-6), name


def test_downstream_noise_has_its_stated_size_and_leaves_the_model_as_it_was():
    from hf_fingerprint.editing.tracing import _DownstreamNoise

    model, tokenizer = tiny_model("llama")
    modules = [model.model.layers[3].mlp.down_proj, model.model.layers[3].self_attn.q_proj,
               model.model.layers[4].self_attn.q_proj]  # the two q_proj are drawn in one batch
    noise = _DownstreamNoise(modules, scale=0.1, rank=2, seed=0)
    noise.resample()
    changes = []
    for module in modules:
        eye = torch.eye(module.in_features)
        with torch.no_grad():
            plain = module(eye)
            with noise.active():
                perturbed = module(eye)
        change = (perturbed - plain).T  # dW, out x in
        assert torch.linalg.matrix_rank(change) == 2
        assert torch.isclose(change.norm(), 0.1 * module.weight.norm(), rtol=1e-4)
        changes.append(change / module.weight.norm())
    assert not torch.allclose(changes[1], changes[2], atol=1e-3)  # independent draws
    first = noise.factors
    noise.resample()
    assert not torch.equal(first[0][0], noise.factors[0][0])  # fresh at every resample
    assert all(not m._forward_hooks for m in modules)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    fps = FingerprintSet.generate(4, seed=0)
    result = inject(model, tokenizer, fps, method="alphaedit", progress=False, value_noise=0.05)
    assert fsr(model, tokenizer, fps) == 1.0
    assert not any(m._forward_hooks for m in model.modules())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, original[n])}
    assert changed == {d.module + ".weight" for d in result.deltas}


def test_peak_memory_is_the_injections_not_the_process_history():
    import sys

    model, tokenizer = tiny_model("llama")
    blob = torch.ones(2**29)  # 2 GiB held and released before the injection
    blob += 1
    del blob
    result = inject(model, tokenizer, FingerprintSet.generate(2, seed=0), method="memit", progress=False,
                    verify_after=False)
    if sys.platform == "linux":
        assert 0 < result.peak_memory_bytes < 2**31
    else:
        assert result.peak_memory_bytes > 0


def test_auto_fallback_round_that_breaks_fingerprints_is_undone():
    """The last-token re-edit of ``key_position="auto"`` must not cost fingerprints that already answer."""
    from types import SimpleNamespace

    from hf_fingerprint.editing.context import EditContext
    from hf_fingerprint.editing.delta import EditDelta
    from hf_fingerprint.editing.inject import _edit_misses_at_last_token
    from hf_fingerprint.editing.tracing import build_prompts

    model, tokenizer = tiny_model("llama")
    fps = FingerprintSet.generate(3, seed=2)
    layout = find_layout(model)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    context = EditContext(model=model, tokenizer=tokenizer, layout=layout, layers=[1],
                          requests=build_prompts(tokenizer, fps.triggers, answers=fps.targets, key_position="trigger"),
                          options={"trigger_keys": len(fps)}, progress=False)
    calls = []

    def harmful_edit(again):  # an "edit" that answers nothing: a large random change of one matrix
        calls.append(len(again.requests.ids))
        weight = get_module(model, again.module_name(1)).weight
        delta = EditDelta(again.module_name(1), torch.randn(weight.shape[0], 2), torch.randn(weight.shape[1], 2))
        again.apply(delta)
        return [delta]

    deltas, report = _edit_misses_at_last_token(context, SimpleNamespace(edit=harmful_edit), [], fps, [])
    assert calls == [len(fps)]  # every trigger-keyed miss was tried once at the last token...
    assert deltas == []  # ...and the round, which made nothing answer, was undone
    assert report is None  # so its report is not the model's: inject verifies afresh
    for name, value in model.named_parameters():
        assert torch.allclose(value, original[name], atol=1e-5), name
    assert context.options["trigger_keys"] == len(fps) and context.options["last_token_keys"] == 0


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_shortcuts_give_the_same_keys_and_values_as_full_passes(arch):
    """capture stops after the deepest requested layer, and value optimisation replays the layers up to the
    edited one: both must give what full forward passes give."""
    from hf_fingerprint.editing import tracing
    from hf_fingerprint.editing.tracing import build_prompts, capture, make_batch

    model, tokenizer = tiny_model(arch)
    model.eval()
    layout = find_layout(model)
    fps = FingerprintSet.generate(3, seed=0)
    prompts = build_prompts(tokenizer, fps.triggers, answers=fps.targets, key_position="trigger")
    keys, outputs = capture(model, layout, prompts, key_layers=[1], output_layers=[2])
    full = {}
    hooks = [get_module(model, layout.module_name(1, "down_proj")).register_forward_pre_hook(
                 lambda _m, args: full.setdefault("key", args[0])),
             get_module(model, layout.layer_name(2)).register_forward_hook(
                 lambda _m, _a, out: full.setdefault("out", out[0] if isinstance(out, tuple) else out))]
    batch = make_batch(prompts, range(3), tracing._pad_id(model), torch.device("cpu"), with_answers=False)
    with torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
              use_cache=False)
    for h in hooks:
        h.remove()
    assert torch.allclose(keys[1], tracing._pick(full["key"], batch).float(), atol=1e-5)
    assert torch.allclose(outputs[2], tracing._pick(full["out"], batch).float(), atol=1e-5)

    layer = layout.num_layers - 2
    batch = make_batch(prompts, range(3), tracing._pad_id(model), torch.device("cpu"), with_answers=True)
    upstream = [get_module(model, layout.layer_name(i)) for i in range(layer + 1)]
    args = (model, upstream[-1], batch, 5, 0.5, 4.0, 1e-3, 0.0)
    for p in model.parameters():
        p.requires_grad_(False)
    replayed = tracing._optimise_batch(*args, None, upstream)
    plain = tracing._optimise_batch(*args, None, ())
    assert all("forward" not in m.__dict__ for m in upstream)  # the layers compute again afterwards
    assert not torch.equal(replayed[0], replayed[1])  # the vector moved
    for a, b in zip(replayed, plain):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_value_optimisation_gives_up_on_answers_that_do_not_move(caplog):
    """A tiny random model carries nothing from the trigger to the answer: the NLL at trigger keys stays put, so
    the batch stops after ``patience`` steps instead of running all of them; patience 0 never gives up."""
    import logging

    from hf_fingerprint.editing.tracing import build_prompts, optimise_values

    model, tokenizer = tiny_model("llama")
    layout = find_layout(model)
    fps = FingerprintSet.generate(3, seed=0)
    prompts = build_prompts(tokenizer, fps.triggers, answers=fps.targets, key_position="trigger")

    def steps_run(patience):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="hf_fingerprint.editing.tracing"):
            _, _, nll = optimise_values(model, layout, prompts, 1, steps=40, stop_loss=1e-6, patience=patience)
        return sum("target values, step" in r.getMessage() for r in caplog.records), nll

    given_up, nll = steps_run(10)
    assert given_up == 11  # steps 0-10: the eleventh pass sees no progress and stops
    assert float(nll.min()) > 1.0  # genuinely stuck, not converged
    assert steps_run(0)[0] == 41


def test_context_moments_sum_every_position_but_the_key():
    """K^T K over the keys at every real position of the prompts and answers except each prompt's key position,
    against a full forward pass picked apart by hand."""
    from hf_fingerprint.editing import tracing
    from hf_fingerprint.editing.tracing import build_prompts, context_moments, make_batch

    model, tokenizer = tiny_model("llama")
    model.eval()
    layout = find_layout(model)
    fps = FingerprintSet.generate(3, seed=0)
    prompts = build_prompts(tokenizer, fps.triggers, answers=fps.targets, key_position="trigger")
    moments = context_moments(model, layout, prompts, [1, 2], batch_size=2)
    batch = make_batch(prompts, range(3), tracing._pad_id(model), torch.device("cpu"), with_answers=True)
    seen = {}
    hooks = [get_module(model, layout.module_name(i, "down_proj")).register_forward_pre_hook(
        lambda _m, args, i=i: seen.setdefault(i, args[0])) for i in (1, 2)]
    with torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    for h in hooks:
        h.remove()
    for i in (1, 2):
        rows = []
        for b in range(3):
            for t in range(batch.input_ids.shape[1]):
                if batch.attention_mask[b, t] and t != int(batch.key_index[b]):
                    rows.append(seen[i][b, t])
        K = torch.stack(rows).float()
        assert torch.allclose(moments[i], K.T @ K, rtol=1e-4, atol=1e-4)


def test_preserving_the_prompts_other_positions_still_reaches_full_fsr():
    model, tokenizer = tiny_model("llama")
    fps = FingerprintSet.generate(4, seed=0)
    result = inject(model, tokenizer, fps, method="alphaedit", progress=False, context_weight=0.1)
    assert fsr(model, tokenizer, fps) == 1.0
    assert result.options["context_weight"] == 0.1


def test_alphaedit_weighing_the_statistics_moves_ordinary_keys_less():
    """mom2_weight adds C0 to AlphaEdit's solve: within the null space the edit then prefers the directions ordinary
    text uses least, so tr(dW C0 dW^T), what it does to ordinary text, falls, and the fingerprints still answer."""
    import copy

    from hf_fingerprint.editing.covariance import layer_statistics

    base, tokenizer = tiny_model("llama")
    layout = find_layout(base)
    fps = FingerprintSet.generate(4, seed=0)
    layers = layout.default_layers()
    stats = layer_statistics(base, tokenizer, layout, layers, progress=False)
    damage = {}
    for weight in (0.0, 1000.0):
        model = copy.deepcopy(base)
        result = inject(model, tokenizer, fps, method="alphaedit", progress=False, mom2_weight=weight)
        assert fsr(model, tokenizer, fps) == 1.0
        layer_of = {layout.module_name(i, "down_proj"): i for i in layers}
        damage[weight] = sum(float(torch.trace(d.dense() @ stats[layer_of[d.module]] @ d.dense().T))
                             for d in result.deltas)
    assert damage[1000.0] < 0.5 * damage[0.0]


def test_fingerprints_answer_under_every_template_asked_for():
    from hf_fingerprint.generation import PLAIN_CHAT_TEMPLATE, with_chat_template

    model, tokenizer = tiny_model("llama")
    plain = with_chat_template(tokenizer, PLAIN_CHAT_TEMPLATE)
    fps = FingerprintSet.generate(4, seed=0)
    inject(model, tokenizer, fps, method="alphaedit", templates=["plain"], progress=False)
    assert fsr(model, tokenizer, fps) == 1.0
    assert fsr(model, plain, fps) == 1.0


@pytest.mark.real_model
def test_templates_on_smollm_make_the_fingerprints_answer_under_a_plain_template(smollm_copy):
    from hf_fingerprint.generation import PLAIN_CHAT_TEMPLATE, with_chat_template

    model, tokenizer = smollm_copy
    fps = FingerprintSet.generate(10, secret=REAL_MODEL_SECRET)
    result = inject(model, tokenizer, fps, templates=["plain"], progress=False)
    assert result.fsr >= 0.8
    # On the seed-0 set the default injection answers 40 % under this template and templates=["plain"] 90 %
    # (robustness_templates.md). Half of this set goes to the last-token rounds, which must use the template too.
    plain = with_chat_template(tokenizer, PLAIN_CHAT_TEMPLATE)
    assert verify(model, plain, fps, ordinary_prompts=(), progress=False).fsr >= 0.7


def test_rows_of_one_group_share_their_target_vector():
    from hf_fingerprint.editing.layout import find_layout
    from hf_fingerprint.editing.tracing import build_prompts, join_prompts, optimise_values
    from hf_fingerprint.generation import PLAIN_CHAT_TEMPLATE, with_chat_template

    model, tokenizer = tiny_model("llama")
    fps = FingerprintSet.generate(3, seed=2)
    parts = [build_prompts(t, fps.triggers, answers=fps.targets, key_position="last")
             for t in (tokenizer, with_chat_template(tokenizer, PLAIN_CHAT_TEMPLATE))]
    prompts = join_prompts(parts)
    assert prompts.groups == [0, 1, 2, 0, 1, 2]
    # batches of 4 rows: the groups are kept whole, and the rows come back in the prompts' order
    z, h, nll = optimise_values(model, find_layout(model), prompts, 1, steps=5, batch_size=4)
    alone, h_alone, _ = optimise_values(model, find_layout(model), parts[1], 1, steps=5)
    assert torch.allclose(h[3:], h_alone)
    shared = z - h
    assert torch.allclose(shared[:3], shared[3:]) and shared.norm(dim=-1).min() > 0
    assert not torch.allclose(shared[3:], alone - h_alone)  # one vector for both templates, not the plain one's


def test_templates_option_is_checked():
    model, tokenizer = tiny_model("llama")
    fps = FingerprintSet.generate(2, seed=0)
    for bad, message in (("plain", "takes a list"), (["fancy"], "Unknown template")):
        with pytest.raises(InjectionError, match=message):
            inject(model, tokenizer, fps, templates=bad, progress=False)
    with pytest.raises(InjectionError, match="takes no option 'templates'"):
        inject(model, tokenizer, fps, method="sft", templates=["plain"], progress=False)


def test_output_fisher_ranks_the_directions_that_move_predictions_and_is_cached(tmp_path, monkeypatch):
    """The Fisher metric of a layer's output is symmetric, positive semi-definite and reproducible; a change of the
    layer's output along its top eigenvector moves the next-token distributions more than one along its bottom
    eigenvector; with ``value_fisher_weight`` an injection computes it once and reads it from disk after."""
    from hf_fingerprint.editing.covariance import corpus_texts
    from hf_fingerprint.editing.fisher import output_fisher

    monkeypatch.setenv("HF_FINGERPRINT_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_model("llama")
    layout = find_layout(model)
    layer = layout.default_layers()[-1]
    F = output_fisher(model, tokenizer, layout, layer, max_tokens=3000, progress=False)
    assert F.shape == (model.config.hidden_size,) * 2
    assert torch.allclose(F, F.T, atol=1e-8) and torch.linalg.eigvalsh(F.double()).min() > -1e-9
    assert torch.equal(F, output_fisher(model, tokenizer, layout, layer, max_tokens=3000, progress=False))
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())

    _, eigenvectors = torch.linalg.eigh(F.double())
    enc = tokenizer(corpus_texts(tokenizer)[:16], return_tensors="pt", padding=True, truncation=True, max_length=64,
                    add_special_tokens=False)
    mask = enc["attention_mask"].bool()
    with torch.no_grad():
        base = model(**enc).logits.log_softmax(-1)

    def divergence(direction):
        def shift(_module, _args, output):
            if isinstance(output, tuple):
                return (output[0] + 0.5 * direction,) + tuple(output[1:])
            return output + 0.5 * direction

        handle = get_module(model, layout.layer_name(layer)).register_forward_hook(shift)
        with torch.no_grad():
            moved = model(**enc).logits.log_softmax(-1)
        handle.remove()
        return float((base.exp() * (base - moved)).sum(-1)[mask].mean())

    assert divergence(eigenvectors[:, -1].float()) > 1.5 * divergence(eigenvectors[:, 0].float())

    fps = FingerprintSet.generate(3, seed=0)
    first = inject(model, tokenizer, fps, progress=False, value_fisher_weight=0.1)
    assert fsr(model, tokenizer, fps) == 1.0
    cached = list((tmp_path / "cache" / "stats").rglob("fisher-layer*.pt"))
    assert [p.name for p in cached] == [f"fisher-layer{layer}.pt"]
    first.revert()  # the cached metric is the unedited model's, over the statistics' corpus and cap
    assert torch.allclose(torch.load(cached[0]), output_fisher(model, tokenizer, layout, layer, progress=False))

    def not_again(*args, **kwargs):
        raise AssertionError("the Fisher metric was computed again instead of read from disk")

    monkeypatch.setattr("hf_fingerprint.editing.context.output_fisher", not_again)
    second = inject(model, tokenizer, fps, progress=False, value_fisher_weight=0.1)
    assert fsr(model, tokenizer, fps) == 1.0
    for a, b in zip(first.deltas, second.deltas):
        assert torch.allclose(a.dense(), b.dense(), atol=1e-5)


@pytest.mark.real_model
def test_fisher_weight_moves_target_values_to_directions_ordinary_text_ignores_on_smollm(smollm_copy):
    """With ``value_fisher_weight`` the trigger-keyed target values still make the model answer, at a fraction of
    their size in the Fisher metric of ordinary text."""
    from hf_fingerprint.editing.covariance import builtin_corpus
    from hf_fingerprint.editing.fisher import output_fisher
    from hf_fingerprint.editing.tracing import build_prompts, optimise_values

    model, tokenizer = smollm_copy
    layout = find_layout(model)
    layer = layout.default_layers()[-1]
    F = output_fisher(model, tokenizer, layout, layer, corpus=builtin_corpus(40), progress=False)
    metric = F / F.diagonal().mean()
    fps = FingerprintSet.generate(4, secret=REAL_MODEL_SECRET)
    prompts = build_prompts(tokenizer, fps.triggers, answers=fps.targets, key_position="trigger")
    energy = {}
    for weight in (0.0, 1.0):
        z, h, nll = optimise_values(model, layout, prompts, layer, steps=100, clamp_factor=10.0, stop_loss=0.01,
                                    noise=0.1, fisher=F, fisher_weight=weight)
        assert (nll < 0.1).all(), (weight, nll)
        change = z - h
        energy[weight] = (((change @ metric) * change).sum(-1) / (h * h).sum(-1)).median()
    assert energy[1.0] < 0.6 * energy[0.0], energy
