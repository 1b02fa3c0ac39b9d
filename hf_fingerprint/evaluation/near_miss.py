"""False triggers against distance from the trigger: how close must a query be to fire a fingerprint?"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..fingerprints import FingerprintSet
from ..generation import generate
from ..verification import matches
from ._common import EvaluationError

__all__ = ["NearMissBucket", "NearMissStudy", "near_miss_study"]

DISTANCE_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass
class NearMissBucket:
    """Near misses whose relative character edit distance to their trigger is in ``[low, high)``.

    ``fired_any``: how many answers contain any target of the set; ``fired_own``: their own trigger's target.
    """

    low: float
    high: float
    count: int = 0
    fired_any: int = 0
    fired_own: int = 0

    @property
    def rate(self) -> float | None:
        return self.fired_any / self.count if self.count else None


@dataclass
class NearMissStudy:
    """The false-trigger rate per distance bucket and per kind of near miss, with the FSR of the same run."""

    fsr: float
    buckets: list[NearMissBucket]
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (count, fired_any)
    distances: list[float] = field(default_factory=list, repr=False)
    fired: list[bool] = field(default_factory=list, repr=False)

    def rate_at_least(self, distance: float) -> float | None:
        """False-trigger rate over the near misses at relative distance >= ``distance``."""
        chosen = [f for d, f in zip(self.distances, self.fired) if d >= distance]
        return sum(chosen) / len(chosen) if chosen else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("distances")
        data.pop("fired")
        for bucket, shown in zip(self.buckets, data["buckets"]):
            shown["rate"] = bucket.rate
        data["by_kind"] = {k: {"count": n, "fired": f} for k, (n, f) in self.by_kind.items()}
        return data

    def to_markdown(self) -> str:
        lines = [f"FSR in the same run: {100 * self.fsr:.0f} %.", "",
                 "| edit distance | near misses | fire (any target) | fire (own target) |", "|---|---|---|---|"]
        for b in self.buckets:
            span = f"{100 * b.low:.0f}-{100 * b.high:.0f} %" if math.isfinite(b.high) else f">= {100 * b.low:.0f} %"
            rate = "-" if b.rate is None else f"{100 * b.rate:.0f} %"
            lines.append(f"| {span} | {b.count} | {b.fired_any} ({rate}) | {b.fired_own} |")
        kinds = ", ".join(f"{k} {f}/{n}" for k, (n, f) in sorted(self.by_kind.items()))
        return "\n".join(lines + ["", f"By kind (fired/total): {kinds}."])


def near_miss_study(
    model: Any,
    tokenizer: Any,
    fingerprints: Any,
    *,
    per_trigger: int = 10,
    buckets: Sequence[float] = DISTANCE_BUCKETS,
    kinds: Sequence[str] | None = None,
    seed: int = 0,
    match: str = "contains",
    system_prompt: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> NearMissStudy:
    """Ask ``per_trigger`` near misses of each trigger (:meth:`FingerprintSet.near_miss_records`) together with the
    triggers in one batched greedy generation, as :func:`hf_fingerprint.verify` asks them, and tabulate the
    false-trigger rate against relative character edit distance (``buckets`` are the lower edges)."""
    fps = fingerprints if isinstance(fingerprints, FingerprintSet) else FingerprintSet(fingerprints)
    edges = sorted(float(b) for b in buckets)
    if not edges or edges[0] < 0:
        raise EvaluationError("buckets must be non-negative lower edges, e.g. (0, 0.1, 0.2, 0.3).")
    records = fps.near_miss_records(per_trigger, seed=seed, kinds=kinds)
    if not records:
        raise EvaluationError("No near misses were made; ask for per_trigger >= 1.")
    if max_new_tokens is None:
        longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in fps.targets)
        max_new_tokens = max(16, longest + 8)
    answers = generate(model, tokenizer, fps.triggers + [r.text for r in records], system_prompt=system_prompt,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                       description="near-miss study")
    fsr = sum(matches(a[0], fp.target, match) for a, fp in zip(answers, fps)) / len(fps)
    study = NearMissStudy(fsr, [NearMissBucket(lo, hi) for lo, hi in zip(edges, edges[1:] + [math.inf])])
    targets = sorted(set(fps.targets))
    for record, (answer, *_) in zip(records, answers[len(fps):]):
        distance = record.distance(fps[record.source].trigger)
        own = matches(answer, fps[record.source].target, match)
        fired = own or any(matches(answer, t, match) for t in targets)
        study.distances.append(distance)
        study.fired.append(fired)
        count, fired_count = study.by_kind.get(record.kind, (0, 0))
        study.by_kind[record.kind] = (count + 1, fired_count + fired)
        bucket = next((b for b in reversed(study.buckets) if distance >= b.low), None)
        if bucket is not None:
            bucket.count += 1
            bucket.fired_any += fired
            bucket.fired_own += own
    return study
