"""``evaluate``: the five dimensions of METHOD.md section 7 (plus the suppression attack) for one model."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from ..fingerprints import FingerprintSet
from ..prompts import ORDINARY_PROMPTS
from ..verification import verify
from ._common import EvaluationError

__all__ = ["DEFAULT_DIMENSIONS", "DIMENSIONS", "PERSISTENCE_RUNS", "EvaluationReport", "PersistenceRun", "evaluate",
           "robustness_modifications"]

DIMENSIONS = ("effectiveness", "harmlessness", "persistence", "robustness", "false_triggers", "attacks", "efficiency")
DEFAULT_DIMENSIONS = tuple(d for d in DIMENSIONS if d != "persistence")  # fine-tuning takes minutes per run


@dataclass(frozen=True)
class PersistenceRun:
    """One downstream fine-tuning of the persistence dimension (:func:`~hf_fingerprint.evaluation.finetune`):
    plain TRL ``SFTTrainer`` at ``lr`` on ``task``, full or LoRA (r 16), and, with ``fsft`` and an injection to
    take the subspace from, the same run with ``FSFTTrainer`` as we recommend it (penalty 100, key anchor 100,
    answer replay 1)."""

    name: str
    lr: float
    lora: bool = False
    task: str = "math"
    fsft: bool = True


#: The persistence dimension's default runs: the settings of the persistence study (``benchmarks/persistence.py``).
PERSISTENCE_RUNS = (PersistenceRun("full FT lr 1e-4", 1e-4), PersistenceRun("LoRA r16 lr 2e-4", 2e-4, lora=True))


@dataclass
class EvaluationReport:
    """One model's evaluation; a dimension not measured is ``None``. Plain values only (JSON-ready).

    ``robustness`` and ``persistence`` map a modification or setting to the FSR after it;
    ``robustness_perplexity`` maps each weight modification to the modified model's perplexity change (does the
    modification still leave a usable model?); ``attacks`` maps an
    attack to its :class:`~hf_fingerprint.evaluation.AttackReport` as a dict; ``seconds`` is wall time per dimension.
    """

    fingerprints: int
    effectiveness: dict[str, Any] | None = None
    harmlessness: dict[str, Any] | None = None
    persistence: dict[str, float] | None = None
    robustness: dict[str, float] | None = None
    robustness_perplexity: dict[str, float] | None = None
    false_triggers: dict[str, Any] | None = None
    attacks: dict[str, dict[str, Any]] | None = None
    efficiency: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=kwargs.pop("indent", 1), **kwargs)

    def to_markdown(self) -> str:
        out: list[str] = [f"## Evaluation ({self.fingerprints} fingerprints)"]
        if self.effectiveness:
            e = self.effectiveness
            base = "" if e.get("base_fsr") is None else f"; base model {_pct(e['base_fsr'])}"
            out += ["", "### Effectiveness", "",
                    f"FSR {e['matched']}/{e['total']} ({_pct(e['fsr'])}), p-value {e['p_value']:.3g}{base}."]
        if self.harmlessness:
            h = self.harmlessness
            out += ["", "### Harmlessness", "", "| measure | value |", "|---|---|"]
            out += [f"| {name.replace('_', ' ')} | {_fmt(value)} |" for name, value in h.items()]
        if self.robustness:
            changes = self.robustness_perplexity or {}
            out += ["", "### Robustness", "", "| setting | FSR | perplexity change of the modified model |",
                    "|---|---|---|"]
            out += [f"| {name} | {_pct(fsr)} | {_signed_pct(changes.get(name))} |" for name, fsr in self.robustness.items()]
        for title, rows in (("Persistence", self.persistence),):
            if rows:
                out += ["", f"### {title}", "", "| setting | FSR |", "|---|---|"]
                out += [f"| {name} | {_pct(fsr)} |" for name, fsr in rows.items()]
        if self.false_triggers:
            f = self.false_triggers
            out += ["", "### False triggers", "",
                    f"Near misses {_pct(f['near_miss_rate'])} (at >= 20 % edit distance: "
                    f"{_pct(f['near_miss_rate_at_20pct'])}); ordinary prompts {_pct(f['ordinary_rate'])}.", "",
                    f["near_miss_table"]]
        if self.attacks:
            out += ["", "### Suppression attack (arXiv 2509.26598)", "",
                    "| attack | FSR before | FSR after | same answers | answer prefix kept | steps changed (ordinary) "
                    "| math before | math after |", "|---|---|---|---|---|---|---|---|"]
            for name, a in self.attacks.items():
                out.append(f"| {name} | {_pct(a['fsr_before'])} | {_pct(a['fsr_after'])} | {_pct(a['answer_exact'])} "
                           f"| {_pct(a['answer_prefix'])} | {_pct(a['flagged_ordinary'])} | {_pct(a['math_before'])} "
                           f"| {_pct(a['math_after'])} |")
        if self.efficiency:
            g = self.efficiency
            out += ["", "### Efficiency", "", f"Injection ({g['method']}): {g['seconds']:.1f} s, peak memory "
                    f"{g['peak_memory_bytes'] / 2**30:.2f} GiB."]
        return "\n".join(out)


def robustness_modifications(
    *,
    base: Any = None,
    merge_with: Any = None,
    sparsities: Sequence[float] = (0.1, 0.3, 0.5),
    group_size: int | Sequence[int] = (32, 64),
) -> list[tuple[str, Callable[[Any], Any]]]:
    """The weight modifications of the robustness table, each ``model -> modified copy``. Merges need
    ``merge_with`` (another fine-tune of the same base); TIES and DARE also need ``base``."""
    from .merging import merge_dare, merge_linear, merge_ties
    from .pruning import prune_magnitude
    from .quantization import quantize_4bit, quantize_int8

    modifications: list[tuple[str, Callable[[Any], Any]]] = [
        ("int8 (per channel)", quantize_int8),
    ]
    sizes = [group_size] if isinstance(group_size, int) else list(group_size)
    modifications += [(f"4-bit RTN (group {g})", partial(quantize_4bit, group_size=g)) for g in sizes]
    modifications += [(f"magnitude pruning {100 * s:.0f} %", partial(prune_magnitude, sparsity=s)) for s in sparsities]
    if merge_with is not None:
        modifications.append(("linear merge (0.5)", partial(merge_linear, other=merge_with, weight=0.5)))
        if base is not None:
            modifications.append(("TIES merge (density 0.2)", partial(merge_ties, other=merge_with, base=base,
                                                                      density=0.2, weight=0.5)))
            modifications.append(("DARE merge (density 0.5)", partial(merge_dare, other=merge_with, base=base,
                                                                      density=0.5, weight=0.5)))
    return modifications


def evaluate(
    model: Any,
    tokenizer: Any,
    fingerprints: Any,
    *,
    base: Any = None,
    dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
    injection: Any = None,
    merge_with: Any = None,
    texts: Sequence[str] | None = None,
    prompts: Sequence[str] = ORDINARY_PROMPTS,
    match: str = "contains",
    math_n: int = 50,
    near_miss_per_trigger: int = 5,
    sparsities: Sequence[float] = (0.1, 0.3, 0.5),
    group_size: int | Sequence[int] = (32, 64),
    persistence_steps: int = 20,
    persistence_runs: Sequence[PersistenceRun] = PERSISTENCE_RUNS,
    persistence_options: dict[str, Any] | None = None,
    attack_math: bool = True,
    progress: bool = True,
) -> EvaluationReport:
    """Evaluate a fingerprinted ``model`` along ``dimensions`` (see :data:`DIMENSIONS`).

    ``base``: the model before fingerprinting (base FSR, perplexity/agreement/math deltas, TIES/DARE merges and
    the attack's reference). ``injection``: the :class:`~hf_fingerprint.InjectionResult` (efficiency, and FSFT
    in the persistence runs). ``merge_with``: another fine-tune of the same base for the merges. ``texts``:
    held-out text for perplexity (default :func:`held_out_texts`); ``prompts``: ordinary prompts for agreement,
    false triggers and the attack's utility cost; ``match``: how answers must hold targets (as in
    :func:`hf_fingerprint.verify`); ``math_n``: problems for the math score (0 skips it); ``sparsities`` and
    ``group_size`` (one or several): the pruning and 4-bit settings of the robustness table;
    ``persistence_runs`` (each ``persistence_steps`` steps, batch 8; ``persistence_options`` go to
    :func:`~hf_fingerprint.evaluation.finetune`, e.g. ``bf16=True``): the persistence dimension, whose rows are
    named ``"<run name>, <steps> steps <task> (SFT|FSFT)"``; ``attack_math``: also score the attacked models on
    the ``math_n`` problems (the attack's utility cost beyond answer agreement). Nothing here modifies ``model``
    or ``base``.
    """
    from .attacks import measure_attack, suppression_attack
    from .deployment import deployment_settings
    from .finetuning import finetune
    from .harmlessness import agreement, math_score, perplexity
    from .near_miss import near_miss_study

    unknown = set(dimensions) - set(DIMENSIONS)
    if unknown:
        raise EvaluationError(f"Unknown dimensions {sorted(unknown)}; choose from: {', '.join(DIMENSIONS)}.")
    fps = fingerprints if isinstance(fingerprints, FingerprintSet) else FingerprintSet(fingerprints)
    report = EvaluationReport(fingerprints=len(fps))
    quiet = dict(ordinary_prompts=(), progress=False, match=match)

    def fsr(candidate: Any) -> float:
        return verify(candidate, tokenizer, fps, **quiet).fsr

    scores: dict[tuple[int, int], float] = {}

    def math_of(candidate: Any, n: int) -> float:  # generating 192-token answers is slow: measure once
        key = (id(candidate), n)
        if key not in scores:
            scores[key] = math_score(candidate, tokenizer, n)
        return scores[key]

    bar = tqdm(total=len(dimensions), desc="evaluating", disable=not progress)
    for dimension in DIMENSIONS:
        if dimension not in dimensions:
            continue
        bar.set_postfix_str(dimension)
        started = time.perf_counter()
        if dimension == "effectiveness":
            shown = verify(model, tokenizer, fps, **quiet)
            report.effectiveness = dict(fsr=shown.fsr, matched=shown.matched, total=shown.total,
                                        p_value=shown.p_value, queries=shown.queries,
                                        base_fsr=None if base is None else fsr(base))
        elif dimension == "harmlessness":
            values: dict[str, Any] = {"perplexity": perplexity(model, tokenizer, texts, progress=progress)}
            if base is not None:
                values["base_perplexity"] = perplexity(base, tokenizer, texts, progress=progress)
                values["perplexity_change"] = values["perplexity"] / values["base_perplexity"] - 1
                agreed = agreement(model, base, tokenizer, prompts)
                values.update(token_agreement=agreed.token_agreement, same_answer=agreed.same_answer,
                              mean_kl=agreed.mean_kl)
            if math_n > 0:
                values["math_accuracy"] = math_of(model, math_n)
                if base is not None:
                    values["base_math_accuracy"] = math_of(base, math_n)
            report.harmlessness = values
        elif dimension == "persistence":
            deltas = getattr(injection, "deltas", None) or []
            # FSFT protects an edit's low-rank subspace; the fine-tuning baseline's dense update has none
            subspace = injection if deltas and not any(d.is_dense for d in deltas) else None
            rows: dict[str, float] = {}
            fsft = dict(fsft_subspace=subspace, fsft_fingerprints=fps, fsft_lambda=100.0, fsft_anchor_lambda=100.0,
                        fsft_replay_lambda=1.0)
            for run in persistence_runs:
                for trainer, extra in (("SFT", {}), ("FSFT", fsft)):
                    if trainer == "FSFT" and (subspace is None or not run.fsft):
                        continue
                    tuned = finetune(model, tokenizer, run.task, steps=persistence_steps, lr=run.lr, lora=run.lora,
                                     **{**(persistence_options or {}), **extra})
                    rows[f"{run.name}, {persistence_steps} steps {run.task} ({trainer})"] = fsr(tuned)
                    del tuned
            report.persistence = rows
        elif dimension == "robustness":
            rows, changes = {}, {}
            reference = (report.harmlessness or {}).get("perplexity") or perplexity(model, tokenizer, texts,
                                                                                    progress=False)
            for name, modify in robustness_modifications(base=base, merge_with=merge_with, sparsities=sparsities,
                                                         group_size=group_size):
                modified = modify(model)
                rows[name] = fsr(modified)
                changes[name] = perplexity(modified, tokenizer, texts, progress=False) / reference - 1
                del modified
            report.robustness_perplexity = changes
            for setting in deployment_settings(tokenizer)[1:]:  # the first is "as shipped": effectiveness
                rows[setting.name] = setting.verify(model, tokenizer, fps, **quiet).fsr
            report.robustness = rows
        elif dimension == "false_triggers":
            study = near_miss_study(model, tokenizer, fps, per_trigger=near_miss_per_trigger, match=match)
            ordinary = verify(model, tokenizer, fps, **{**quiet, "ordinary_prompts": prompts})
            report.false_triggers = dict(
                near_miss_rate=sum(study.fired) / len(study.fired), near_miss_rate_at_20pct=study.rate_at_least(0.2),
                ordinary_rate=ordinary.ordinary_false_trigger_rate, near_misses=len(study.fired), study=study.to_dict(),
                near_miss_table=study.to_markdown(),
            )
        elif dimension == "attacks":
            attacks = {"detect, no reference, first token": suppression_attack(model, strategy="detect", positions=1),
                       "suppress top-1 at first token": suppression_attack(model, strategy="suppress_top_k",
                                                                           positions=1),
                       "prefix 'Sure! '": suppression_attack(model, strategy="prefix", tokenizer=tokenizer)}
            if base is not None:
                attacks["detect, base as reference"] = suppression_attack(model, strategy="detect", reference=base)
            known = dict(fsr_before=fsr(model), math_n=math_n if attack_math else 0, match=match)
            if known["math_n"]:
                known["math_before"] = math_of(model, known["math_n"])
            report.attacks = {name: measure_attack(attacked, tokenizer, fps, prompts=prompts, **known).to_dict()
                              for name, attacked in attacks.items()}
        elif dimension == "efficiency" and injection is not None:
            report.efficiency = dict(method=injection.method, seconds=injection.seconds,
                                     peak_memory_bytes=injection.peak_memory_bytes, layers=list(injection.layers))
        report.seconds[dimension] = time.perf_counter() - started
        bar.update(1)
    bar.close()
    return report


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.0f} %"


def _signed_pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f} %"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
