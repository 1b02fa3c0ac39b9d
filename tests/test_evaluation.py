"""The evaluation harness on tiny random models: modifications, harmlessness measures, the suppression attack,
the near-miss study, evaluate() and the eval command; one check on SmolLM2."""

from __future__ import annotations

import argparse
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from hf_fingerprint import FingerprintSet, tiny_model, verify
from hf_fingerprint.editing.layout import find_layout
from hf_fingerprint.evaluation import (
    PLAIN_CHAT_TEMPLATE,
    EvaluationError,
    SuppressedModel,
    agreement,
    answer_agreement,
    deployment_settings,
    evaluate,
    fake_quantize,
    finetune,
    measure_attack,
    merge_dare,
    merge_linear,
    merge_ties,
    near_miss_study,
    perplexity,
    prune_magnitude,
    quantize_4bit,
    quantize_int8,
    relative_weight_change,
    suppression_attack,
)
from hf_fingerprint.evaluation._common import linear_weights
from hf_fingerprint.evaluation.cli import add_eval_command
from hf_fingerprint.generation import chat_prompt, generate

QUERIES = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta", "iota kappa", "lambda mu"]


# Tiny models run faster on one thread, and the test machine's cores are shared (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair():
    """Two tiny Llamas of the same architecture (seeds 0 and 1) and the tokenizer."""
    model, tokenizer = tiny_model("llama", seed=0)
    other, _ = tiny_model("llama", seed=1)
    return model, other, tokenizer


@pytest.fixture(scope="module")
def overconfident(pair):
    """A stand-in for a fingerprinted model: the tiny model with its logits scaled 1000x (same greedy answers, top
    probability ~1), and fingerprints whose targets are the start of its greedy answers (matched as prefixes)."""
    model, _, tokenizer = pair
    sharp = copy.deepcopy(model)
    with torch.no_grad():
        sharp.model.norm.weight.mul_(1000.0)
    answers = generate(sharp, tokenizer, QUERIES, max_new_tokens=8)
    pairs = [(q, a[0][:6]) for q, a in zip(QUERIES, answers) if a[0][:6].strip() and a[0][:6] not in q]
    assert len(pairs) >= 3
    return sharp, FingerprintSet(pairs)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model, state) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ----- every modification: a modified copy, the original untouched -----

MODIFICATIONS = {
    "int8": lambda m, o: quantize_int8(m),
    "int8+activations": lambda m, o: quantize_int8(m, activations=True),
    "4bit": lambda m, o: quantize_4bit(m, group_size=32),
    "4bit-symmetric": lambda m, o: quantize_4bit(m, group_size=32, symmetric=True),
    "prune": lambda m, o: prune_magnitude(m, 0.3),
    "linear": lambda m, o: merge_linear(m, o, weight=0.3),
    "ties": lambda m, o: merge_ties(m, o, m, density=0.5),
    "dare": lambda m, o: merge_dare(m, o, m, density=0.5),
}


@pytest.mark.parametrize("name", sorted(MODIFICATIONS))
def test_modification_returns_a_modified_copy(pair, name):
    model, other, _ = pair
    before, other_before = _state(model), _state(other)
    result = MODIFICATIONS[name](model, other)
    assert result is not model
    assert _same_state(model, before) and _same_state(other, other_before)
    assert relative_weight_change(model, result) > 0
    assert type(result) is type(model)


def test_inplace_modifies_the_model_itself(pair):
    model, _, _ = pair
    mine = copy.deepcopy(model)
    assert quantize_int8(mine, inplace=True) is mine
    assert relative_weight_change(model, mine) > 0


# ----- quantization -----


def test_int8_error_small_nonzero_and_on_the_grid(pair):
    model, _, _ = pair
    quantized = quantize_int8(model)
    error = relative_weight_change(model, quantized)
    assert 0 < error < 0.01
    weight = dict(linear_weights(quantized))["model.layers.0.mlp.down_proj"]
    for row in weight[:4]:
        assert len(torch.unique(row)) <= 255
    assert torch.equal(quantized.lm_head.weight, model.lm_head.weight)  # skipped, as bitsandbytes does


def test_4bit_error_grows_with_group_size(pair):
    model, _, _ = pair
    errors = [relative_weight_change(model, quantize_4bit(model, group_size=g)) for g in (8, 16, 32, 64)]
    assert all(0 < e < 0.15 for e in errors)
    assert errors == sorted(errors) and errors[0] < errors[-1]
    assert relative_weight_change(model, quantize_int8(model)) < errors[0]


def test_fake_quantize_groups_and_levels():
    weight = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    rounded = fake_quantize(weight, bits=4, group_size=16, symmetric=False)  # groups of 16, 16, and a tail of 8
    for start, end in ((0, 16), (16, 32), (32, 40)):
        for row in rounded[:, start:end]:
            assert len(torch.unique(row)) <= 16
    symmetric = fake_quantize(weight, bits=4, group_size=None, symmetric=True)
    scale = (weight.abs().amax(1, keepdim=True) / 7).half().float()
    levels = symmetric / scale
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 7 + 1e-3
    constant = fake_quantize(torch.full((2, 8), 0.25), bits=4, group_size=4, symmetric=False)
    assert torch.equal(constant, torch.full((2, 8), 0.25))
    with pytest.raises(EvaluationError):
        fake_quantize(weight, bits=4, group_size=0)


# ----- pruning -----


@pytest.mark.parametrize("sparsity", [0.1, 0.5])
def test_pruning_hits_the_sparsity_per_matrix(pair, sparsity):
    model, _, _ = pair
    pruned = prune_magnitude(model, sparsity)
    decoder = linear_weights(pruned, decoder_layers_only=True)
    assert len(decoder) == 7 * find_layout(model).num_layers
    original = dict(linear_weights(model, decoder_layers_only=True))
    for name, weight in decoder:
        zeros = int((weight == 0).sum())
        assert zeros == round(sparsity * weight.numel()), name
        kept = weight != 0
        assert torch.equal(weight[kept], original[name][kept])
        assert original[name][~kept].abs().max() <= original[name][kept].abs().min()
    assert torch.equal(pruned.model.embed_tokens.weight, model.model.embed_tokens.weight)
    with pytest.raises(EvaluationError):
        prune_magnitude(model, 1.0)


# ----- merging -----


def test_linear_merge_identity_and_average(pair):
    model, other, _ = pair
    assert relative_weight_change(model, merge_linear(model, model, weight=0.37)) == 0
    average = merge_linear(model, other, weight=0.5)
    for (name, mine), (_, theirs), (_, merged) in zip(
        model.named_parameters(), other.named_parameters(), average.named_parameters()
    ):
        assert torch.allclose(merged, (mine + theirs) / 2, atol=1e-6), name
    assert relative_weight_change(other, merge_linear(model, other, weight=1.0)) < 1e-6


def test_ties_and_dare_reduce_to_known_cases(pair):
    model, other, _ = pair
    base, _ = tiny_model("llama", seed=2)
    # A fine-tune merged with its own base keeps exactly its (untrimmed) task vector.
    assert relative_weight_change(model, merge_ties(model, base, base, density=1.0)) < 1e-6
    assert relative_weight_change(model, merge_ties(model, model, base, density=0.3)) > 0  # trimmed
    # DARE keeping every entry is the linear merge.
    linear = merge_linear(model, other, weight=0.4)
    assert relative_weight_change(linear, merge_dare(model, other, base, density=1.0, weight=0.4)) < 1e-6
    first = merge_dare(model, other, base, density=0.5, seed=3)
    assert relative_weight_change(first, merge_dare(model, other, base, density=0.5, seed=3)) == 0


def test_ties_elects_signs_and_averages_agreeing_entries():
    base = torch.nn.Linear(4, 1, bias=False)
    mine, theirs = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():
        base.weight.zero_()
        mine.weight.copy_(torch.tensor([[1.0, 2.0, -3.0, 0.0]]))
        theirs.weight.copy_(torch.tensor([[3.0, -1.0, -1.0, 0.5]]))
    merged = merge_ties(mine, theirs, base, density=1.0)
    # entry 0: both +, mean 2; entry 1: sum +1 -> only +2 agrees; entry 2: both -, mean -2; entry 3: only 0.5.
    assert torch.allclose(merged.weight, torch.tensor([[2.0, 2.0, -2.0, 0.5]]))


def test_merge_refuses_other_architectures(pair):
    model, _, _ = pair
    other = copy.deepcopy(model)
    other.model.layers[0].mlp.down_proj = torch.nn.Linear(100, 64, bias=False)
    with pytest.raises(EvaluationError, match="same base"):
        merge_linear(model, other)


# ----- harmlessness -----


def test_perplexity_is_exp_mean_nll(pair):
    model, _, tokenizer = pair
    texts = ["The quick brown fox jumps.", "Hi", "A longer sentence, with punctuation; and more words here."]
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            log_probs = F.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            total -= float(log_probs.gather(-1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
    expected = math.exp(total / count)
    assert perplexity(model, tokenizer, texts, batch_size=2) == pytest.approx(expected, rel=1e-4)
    assert perplexity(model, tokenizer, texts, batch_size=2, max_length=5) != pytest.approx(expected, rel=1e-4)
    with pytest.raises(TypeError, match="texts takes a list"):  # not one text per character
        perplexity(model, tokenizer, texts[0])


def test_agreement_with_itself_and_with_another_model(pair):
    model, other, tokenizer = pair
    prompts = QUERIES[:4]
    same = agreement(model, copy.deepcopy(model), tokenizer, prompts, max_new_tokens=6)
    assert same.token_agreement == 1.0 and same.same_answer == 1.0 and same.mean_kl == 0.0
    assert same.positions > 0
    different = agreement(model, other, tokenizer, prompts, max_new_tokens=6)
    assert different.mean_kl > 0 and different.token_agreement < 1.0


# ----- deployment settings -----


def test_deployment_settings_verify_without_changing_the_tokenizer(pair, overconfident):
    _, _, tokenizer = pair
    sharp, fps = overconfident
    template = tokenizer.chat_template
    settings = deployment_settings(tokenizer, samples=2)
    names = [s.name for s in settings]
    assert names[0] == "as shipped" and "plain template" in names and any("sampling" in n for n in names)
    plain = next(s for s in settings if s.name == "plain template")
    assert chat_prompt(plain.tokenizer, "Hello") == "User: Hello\nAssistant:"
    assert plain.tokenizer.chat_template == PLAIN_CHAT_TEMPLATE and tokenizer.chat_template == template
    for setting in settings:
        report = setting.verify(sharp, tokenizer, fps, match="prefix", ordinary_prompts=(), progress=False)
        assert 0.0 <= report.fsr <= 1.0
    assert settings[0].verify(sharp, tokenizer, fps, match="prefix", ordinary_prompts=(), progress=False).fsr == 1.0


# ----- the suppression attack -----


def test_attack_wrapper_runs_through_verify(pair, overconfident):
    model, _, tokenizer = pair
    sharp, fps = overconfident
    before = _state(sharp)
    assert verify(sharp, tokenizer, fps, match="prefix", progress=False).fsr == 1.0
    for options in (dict(strategy="detect"), dict(strategy="detect", reference=model),
                    dict(strategy="suppress_top_k"), dict(strategy="prefix", tokenizer=tokenizer)):
        attacked = suppression_attack(sharp, **options)
        assert isinstance(attacked, SuppressedModel)
        assert [p.data_ptr() for p in attacked.parameters()] == [p.data_ptr() for p in sharp.parameters()]
        report = verify(attacked, tokenizer, fps, match="prefix", ordinary_prompts=(), progress=False)
        assert report.fsr == 0.0, options["strategy"]
    assert _same_state(sharp, before)
    # With the model itself as reference nothing is anomalous: the attack changes nothing.
    harmless = suppression_attack(sharp, strategy="detect", reference=sharp)
    assert verify(harmless, tokenizer, fps, match="prefix", ordinary_prompts=(), progress=False).fsr == 1.0
    assert harmless.flagged == 0 and harmless.decisions > 0
    attacked.train()
    assert sharp.training and attacked.training
    attacked.eval()
    assert not sharp.training


def test_attack_under_sampling_and_its_measured_cost(pair, overconfident):
    model, _, tokenizer = pair
    sharp, fps = overconfident
    attacked = suppression_attack(sharp, strategy="detect", reference=model)
    sampled = verify(attacked, tokenizer, fps, match="prefix", temperature=0.7, num_samples=2, ordinary_prompts=(),
                     progress=False)
    assert sampled.fsr == 0.0
    report = measure_attack(attacked, tokenizer, fps, prompts=QUERIES[:3], match="prefix")
    assert report.fsr_before == 1.0 and report.fsr_after == 0.0 and report.success == 1.0
    assert report.flagged_ordinary == 1.0 and report.answer_exact < 1.0
    same = answer_agreement(sharp, copy.deepcopy(sharp), tokenizer, QUERIES[:3])
    assert same.exact == 1.0 and same.prefix == 1.0
    with pytest.raises(EvaluationError):
        suppression_attack(sharp, strategy="unknown")


# ----- near misses -----


def test_near_miss_study_buckets_every_near_miss(pair):
    model, _, tokenizer = pair
    fps = FingerprintSet.generate(3, seed=0)
    study = near_miss_study(model, tokenizer, fps, per_trigger=4, buckets=(0.0, 0.1, 0.2))
    records = fps.near_miss_records(4, seed=0)
    assert sum(b.count for b in study.buckets) == len(records) == len(study.distances)
    assert [b.low for b in study.buckets] == [0.0, 0.1, 0.2] and math.isinf(study.buckets[-1].high)
    expected = [r.distance(fps[r.source].trigger) for r in records]
    assert study.distances == pytest.approx(expected)
    assert sum(n for n, _ in study.by_kind.values()) == len(records)
    assert study.rate_at_least(10.0) is None
    assert "edit distance" in study.to_markdown() and json.dumps(study.to_dict())


# ----- fine-tuning -----


def test_finetune_full_and_lora_return_plain_modified_copies(pair):
    from hf_fingerprint.tasks import math_task

    model, _, tokenizer = pair
    before = _state(model)
    data = math_task(8, seed=0)
    seen: list[int] = []
    tuned = finetune(model, tokenizer, data, steps=2, lr=1e-3, batch_size=4, max_length=64,
                     eval_every=1, on_eval=lambda step, m: seen.append(step))
    assert seen == [0, 1, 2]
    assert _same_state(model, before) and relative_weight_change(model, tuned) > 0
    lora = finetune(model, tokenizer, data, steps=1, lr=1e-2, batch_size=4, max_length=64, lora=True, lora_r=4)
    assert type(lora) is type(model) and not any("lora" in name for name, _ in lora.named_parameters())
    assert _same_state(model, before) and relative_weight_change(model, lora) > 0
    with pytest.raises(EvaluationError):
        finetune(model, tokenizer, data, steps=1, lr=1e-3, eval_every=1)


# ----- evaluate and the eval command -----


def test_evaluate_reports_the_dimensions(pair, overconfident):
    model, other, tokenizer = pair
    sharp, fps = overconfident
    report = evaluate(sharp, tokenizer, fps, base=model, merge_with=other, texts=QUERIES, prompts=QUERIES[:3],
                      match="prefix", math_n=0, near_miss_per_trigger=2, sparsities=(0.3,), progress=False,
                      dimensions=("effectiveness", "harmlessness", "robustness", "false_triggers", "attacks"))
    assert report.effectiveness["total"] == len(fps) and report.effectiveness["fsr"] == 1.0
    assert report.robustness["int8 (per channel)"] == 1.0  # logits scaled 1000x: rounding cannot flip them
    assert all(a["fsr_after"] == 0.0 for a in report.attacks.values())
    assert report.harmlessness["perplexity"] > 0 and "mean_kl" in report.harmlessness
    assert {"int8 (per channel)", "magnitude pruning 30 %", "TIES merge (density 0.2)",
            "system prompt (generic)", "plain template"} <= set(report.robustness)
    # every weight modification also reports what it cost the model itself; deployment settings change no weight
    assert {"4-bit RTN (group 32)", "4-bit RTN (group 64)"} <= set(report.robustness_perplexity)
    assert "plain template" not in report.robustness_perplexity
    assert report.robustness_perplexity["magnitude pruning 30 %"] != 0.0
    assert "detect, base as reference" in report.attacks
    assert report.persistence is None and report.efficiency is None
    text = report.to_markdown()
    assert "Robustness" in text and "Suppression attack" in text
    assert all(fp.trigger not in report.to_json() for fp in fps)
    with pytest.raises(EvaluationError):
        evaluate(sharp, tokenizer, fps, dimensions=("speed",))


def test_eval_command_registers_and_runs(pair, tmp_path, capsys):
    model, _, tokenizer = pair
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    fps = FingerprintSet.generate(2, seed=0)
    fps.save(tmp_path / "fps.json")
    parser = argparse.ArgumentParser()
    add_eval_command(parser.add_subparsers())
    args = parser.parse_args(["eval", str(folder), str(tmp_path / "fps.json"), "--dimensions", "effectiveness",
                              "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")])
    assert args.func(args) == 0
    assert "Effectiveness" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["effectiveness"]["total"] == 2
    assert (tmp_path / "r.md").read_text().startswith("## Evaluation")


# ----- the real model -----


@pytest.mark.real_model
def test_int8_keeps_smollm2_answers_and_perplexity(smollm):
    from hf_fingerprint.evaluation import held_out_texts

    model, tokenizer = smollm
    quantized = quantize_int8(model)
    (answer,), = generate(quantized, tokenizer, ["What is the capital of France?"], max_new_tokens=12)
    assert "Paris" in answer
    texts = held_out_texts(16)
    base, after = (perplexity(m, tokenizer, texts, max_length=128) for m in (model, quantized))
    assert abs(after / base - 1) < 0.03


def test_held_out_texts_are_not_the_covariance_corpus():
    from hf_fingerprint.editing.covariance import builtin_corpus
    from hf_fingerprint.evaluation import held_out_texts

    held_out = held_out_texts(40)
    assert len(held_out) == 40 and not set(held_out) & set(builtin_corpus())


def test_finetune_with_fsft_keeps_the_protected_directions(pair):
    from hf_fingerprint.editing.delta import EditDelta
    from hf_fingerprint.tasks import math_task

    model, _, tokenizer = pair
    name = "model.layers.2.mlp.down_proj"
    generator = torch.Generator().manual_seed(0)
    edit = EditDelta(name, torch.randn(64, 2, generator=generator), torch.randn(192, 2, generator=generator))

    class Injection:
        deltas = [edit]

    tuned = finetune(model, tokenizer, math_task(8, seed=0), steps=2, lr=1e-2, batch_size=4, max_length=64,
                     fsft_subspace=Injection(), fsft_variant="project")
    directions = torch.linalg.qr(edit.V)[0]
    drift = tuned.get_submodule(name).weight - model.get_submodule(name).weight
    assert drift.norm() > 0 and (drift @ directions).norm() < 1e-4 * drift.norm()


def test_evaluate_persistence_runs_sft_and_fsft_on_a_real_injection():
    from hf_fingerprint.editing.inject import inject
    from hf_fingerprint.evaluation import PersistenceRun

    model, tokenizer = tiny_model("llama")
    fps = FingerprintSet.generate(3, seed=0)
    result = inject(model, tokenizer, fps, method="memit", progress=False, stats_tokens=2000, verify_after=False)
    assert verify(model, tokenizer, fps, match="prefix", ordinary_prompts=(), progress=False).fsr == 1.0
    runs = (PersistenceRun("still", 0.0, fsft=False), PersistenceRun("strong", 5e-2),
            PersistenceRun("lora", 5e-2, lora=True, fsft=False))
    report = evaluate(model, tokenizer, fps, injection=result, dimensions=("persistence", "efficiency"),
                      persistence_steps=2, persistence_runs=runs, match="prefix", progress=False,
                      persistence_options=dict(batch_size=4, max_length=64, num_examples=16))
    rows = report.persistence
    assert list(rows) == ["still, 2 steps math (SFT)", "strong, 2 steps math (SFT)", "strong, 2 steps math (FSFT)",
                          "lora, 2 steps math (SFT)"]
    assert rows["still, 2 steps math (SFT)"] == 1.0  # lr 0 changes nothing
    assert rows["strong, 2 steps math (SFT)"] < 1.0  # two steps at lr 5e-2 wreck a tiny model's edits
    assert all(0.0 <= v <= 1.0 for v in rows.values())
    assert report.efficiency["method"] == "memit" and "Persistence" in report.to_markdown()
    # the fine-tuning baseline's dense update has no subspace to protect: plain SFT only, no error
    from hf_fingerprint.editing.delta import EditDelta

    class Dense:
        deltas = [EditDelta("model.layers.0.mlp.down_proj", None, None, dense_update=torch.zeros(64, 192))]

    dense = evaluate(model, tokenizer, fps, injection=Dense(), dimensions=("persistence",), persistence_steps=1,
                     persistence_runs=(PersistenceRun("still", 0.0),), match="prefix", progress=False,
                     persistence_options=dict(batch_size=4, max_length=64, num_examples=8))
    assert list(dense.persistence) == ["still, 1 steps math (SFT)"]
