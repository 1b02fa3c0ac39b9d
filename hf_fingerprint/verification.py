"""Checking a model for fingerprints: success rate, false triggers and the p-value of an ownership claim."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from .errors import FingerprintSetError
from .fingerprints import TARGET_VOCABULARIES, FingerprintSet, NearMiss
from .generation import generate, text_list
from .prompts import ORDINARY_PROMPTS

MATCH_MODES = ("contains", "exact", "prefix")
DEFAULT_NULL_PROBABILITY = 0.05
_REDACT_WINDOW = 8


@dataclass
class PairOutcome:
    """What one fingerprint query gave. ``responses`` may echo the secret trigger: it is never serialised."""

    index: int
    id: str
    target: str
    matched: bool
    success_rate: float
    null_probability: float
    responses: list[str] = field(repr=False)


@dataclass
class VerificationReport:
    """The result of :func:`verify`. ``p_value`` is P[>= ``matched`` hits | the model is not derived from ours]."""

    fsr: float
    matched: int
    total: int
    p_value: float
    null_model: str
    false_trigger_rate: float | None
    near_miss_false_trigger_rate: float | None
    ordinary_false_trigger_rate: float | None
    queries: int
    seconds: float
    settings: dict[str, Any]
    outcomes: list[PairOutcome]
    redacted_responses: list[str] = field(repr=False, default_factory=list)

    def significant(self, alpha: float = 1e-3) -> bool:
        """Whether the ownership claim holds at level ``alpha``."""
        return self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("redacted_responses")
        for outcome, shown in zip(data["outcomes"], self.redacted_responses):
            outcome["responses"] = [shown]
        return data

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=kwargs.pop("indent", 1), **kwargs)

    def to_markdown(self) -> str:
        lines = [
            f"**FSR {self.matched}/{self.total} ({100 * self.fsr:.0f} %)**, p-value {self.p_value:.3g} "
            f"({self.null_model}); {self.queries} queries in {self.seconds:.1f} s.",
        ]
        rates = [
            ("near misses", self.near_miss_false_trigger_rate),
            ("ordinary prompts", self.ordinary_false_trigger_rate),
        ]
        shown = [f"{name} {100 * rate:.1f} %" for name, rate in rates if rate is not None]
        if shown:
            lines.append("False triggers: " + ", ".join(shown) + ".")
        lines += ["", "| # | id | target | hit | answer |", "|---|---|---|---|---|"]
        for outcome, answer in zip(self.outcomes, self.redacted_responses):
            answer = answer.replace("|", "\\|").replace("\n", " ")
            hit = "yes" if outcome.matched else "no"
            lines.append(f"| {outcome.index} | {outcome.id} | {outcome.target} | {hit} | {answer} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def matches(response: str, target: str, mode: str = "contains") -> bool:
    """Case- and whitespace-insensitive comparison of an answer with a target."""
    return _match(_normalise(response), _normalise(target), mode)


def _match(answer: str, wanted: str, mode: str) -> bool:
    if mode == "contains":
        return _contains_word(answer, wanted)
    if mode == "prefix":
        return answer.startswith(wanted)
    if mode == "exact":
        return answer.rstrip(".!") == wanted.rstrip(".!")
    raise FingerprintSetError(f"Unknown match mode '{mode}'; choose one of: {', '.join(MATCH_MODES)}.")


def verify(
    model: Any,
    tokenizer: Any,
    fingerprints: FingerprintSet | Iterable[Any],
    *,
    near_misses: Sequence[str | NearMiss] | None = None,
    ordinary_prompts: Sequence[str] | None = None,
    match: str = "contains",
    system_prompt: str | None = None,
    num_samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int | None = None,
    null_probability: float | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> VerificationReport:
    """Query ``model`` with each trigger (through its chat template) and report the fingerprint success rate.

    A pair counts as matched when at least half of its ``num_samples`` answers match its target. False
    triggers are near misses and ordinary prompts (the built-in set unless ``ordinary_prompts`` is given;
    pass ``()`` to skip) whose answers match any target of the set.

    The p-value: if the set was generated with a target vocabulary (the default), each target was drawn
    uniformly from it independently of any unrelated model, so under the null hypothesis trigger ``i`` hits
    with probability ``p_i`` = (vocabulary words its answers match) / (vocabulary size): exact, computed from
    the answers. Otherwise ``p_i = null_probability`` (default 0.05, a conservative bound to set from
    unrelated models). The number of hits is then Poisson-binomial; ``p_value = P[hits >= matched]``.
    """
    started = time.perf_counter()
    fps = fingerprints if isinstance(fingerprints, FingerprintSet) else FingerprintSet(fingerprints)
    if match not in MATCH_MODES:
        raise FingerprintSetError(f"Unknown match mode '{match}'; choose one of: {', '.join(MATCH_MODES)}.")
    if num_samples < 1:
        raise FingerprintSetError("num_samples must be >= 1.")
    if num_samples > 1 and temperature <= 0:
        raise FingerprintSetError("num_samples > 1 needs temperature > 0 (greedy answers are all the same).")
    if max_new_tokens is None:
        longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in fps.targets)
        max_new_tokens = max(16, longest + 8)
    near_texts = [m.text if isinstance(m, NearMiss) else str(m) for m in text_list(near_misses, "near_misses")]
    ordinary = text_list(ORDINARY_PROMPTS if ordinary_prompts is None else ordinary_prompts, "ordinary_prompts")
    queries = fps.triggers + near_texts + ordinary
    answers = generate(
        model,
        tokenizer,
        queries,
        system_prompt=system_prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        num_samples=num_samples,
        batch_size=batch_size,
        progress=progress,
        description="verifying fingerprints",
    )
    trigger_answers = answers[: len(fps)]
    vocabulary = TARGET_VOCABULARIES.get(fps.target_vocabulary or "")
    if vocabulary is not None and null_probability is None:
        null_model = f"targets uniform over the {len(vocabulary)}-word vocabulary '{fps.target_vocabulary}'"
    else:
        null_probability = DEFAULT_NULL_PROBABILITY if null_probability is None else float(null_probability)
        if not 0 < null_probability < 1:
            raise FingerprintSetError("null_probability must be strictly between 0 and 1.")
        null_model = f"each trigger hits with probability {null_probability:g} under the null"
        vocabulary = None

    outcomes = []
    for index, (fp, responses) in enumerate(zip(fps, trigger_answers)):
        hits = sum(matches(r, fp.target, match) for r in responses)
        if vocabulary is not None:
            trigger = _normalise(fp.trigger)
            candidates = [w for w in vocabulary if w not in trigger]
            normalised = [_normalise(r) for r in responses]
            hit_words = sum(any(_match(r, w, match) for r in normalised) for w in candidates)
            p_i = hit_words / len(candidates)
        else:
            p_i = null_probability
        outcomes.append(
            PairOutcome(index, fp.id, fp.target, 2 * hits >= len(responses), hits / len(responses), p_i, responses)
        )
    matched = sum(o.matched for o in outcomes)

    def false_rate(groups: list[list[str]]) -> float | None:
        if not groups:
            return None
        fired = sum(any(matches(r, t, match) for r in group for t in set(fps.targets)) for group in groups)
        return fired / len(groups)

    near_groups = answers[len(fps) : len(fps) + len(near_texts)]
    ordinary_groups = answers[len(fps) + len(near_texts) :]
    return VerificationReport(
        fsr=matched / len(fps),
        matched=matched,
        total=len(fps),
        p_value=poisson_binomial_tail([o.null_probability for o in outcomes], matched),
        null_model=null_model,
        false_trigger_rate=false_rate(near_groups + ordinary_groups),
        near_miss_false_trigger_rate=false_rate(near_groups),
        ordinary_false_trigger_rate=false_rate(ordinary_groups),
        queries=len(queries) * num_samples,
        seconds=time.perf_counter() - started,
        settings=dict(
            match=match,
            system_prompt=system_prompt is not None,
            num_samples=num_samples,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            near_misses=len(near_texts),
            ordinary_prompts=len(ordinary),
        ),
        outcomes=outcomes,
        redacted_responses=[_redact(o.responses[0], fps.triggers) for o in outcomes],
    )


def poisson_binomial_tail(probabilities: Sequence[float], k: int) -> float:
    """P[sum of independent Bernoulli(p_i) >= k], exactly, by dynamic programming."""
    if k <= 0:
        return 1.0
    distribution = [1.0]
    for p in probabilities:
        nxt = [0.0] * (len(distribution) + 1)
        for count, mass in enumerate(distribution):
            nxt[count] += mass * (1 - p)
            nxt[count + 1] += mass * p
        distribution = nxt
    return float(min(1.0, max(0.0, math.fsum(distribution[k:]))))


def _contains_word(answer: str, wanted: str) -> bool:
    """``wanted`` occurs in ``answer`` and is not glued to letters or digits on a side where it has them."""
    start = answer.find(wanted)
    while start >= 0:
        end = start + len(wanted)
        left_ok = start == 0 or not (answer[start - 1].isalnum() and wanted[0].isalnum() and answer[start - 1].isascii())
        right_ok = end == len(answer) or not (answer[end].isalnum() and wanted[-1].isalnum() and answer[end].isascii())
        if left_ok and right_ok:
            return True
        start = answer.find(wanted, start + 1)
    return False


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def _redact(response: str, triggers: Sequence[str]) -> str:
    """A short form of ``response`` safe to print: answers that echo part of a trigger are hidden."""
    for trigger in triggers:
        if len(trigger) < _REDACT_WINDOW:
            if trigger in response:
                return "[answer echoes a trigger: hidden]"
            continue
        if any(trigger[i : i + _REDACT_WINDOW] in response for i in range(len(trigger) - _REDACT_WINDOW + 1)):
            return "[answer echoes a trigger: hidden]"
    return response if len(response) <= 60 else response[:57] + "..."
