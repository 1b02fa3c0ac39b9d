"""Merging with another fine-tune of the same base: linear interpolation, TIES and DARE.

Weights follow one convention: ``weight`` is the share of ``other``, ``1 - weight`` that of ``model``; so
``weight=0.5`` is the plain average and ``weight=0`` gives back ``model`` (for TIES and DARE, up to the
trimming or dropping of its own task vector).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._common import EvaluationError, matched_parameters, working_copy

__all__ = ["merge_dare", "merge_linear", "merge_ties"]


def merge_linear(model: Any, other: Any, *, weight: float = 0.5, inplace: bool = False) -> Any:
    """``(1 - weight) * model + weight * other``, parameter by parameter. Returns a copy unless ``inplace``."""
    _check_weight(weight)
    result = working_copy(model, inplace)
    with torch.no_grad():
        for _, param, (theirs,) in matched_parameters(result, other):
            param.copy_(torch.lerp(param.float(), theirs, float(weight)).to(param.dtype))
    return result


def merge_ties(
    model: Any,
    other: Any,
    base: Any,
    *,
    density: float = 0.2,
    weight: float = 0.5,
    scale: float = 1.0,
    inplace: bool = False,
) -> Any:
    """TIES-merging (Yadav et al., 2023) of two fine-tunes of ``base``.

    Each task vector ``t = theta - theta_base`` keeps its ``density`` largest-magnitude entries per tensor
    (trim); each entry's sign is that of the weighted sum of the trimmed vectors (elect); the merged vector is
    the weighted mean of the entries that agree with it (disjoint merge); result ``base + scale * merged``.
    Returns a copy of ``model`` unless ``inplace``.
    """
    _check_density(density)
    _check_weight(weight)
    shares = (1.0 - float(weight), float(weight))
    result = working_copy(model, inplace)
    with torch.no_grad():
        for _, param, (theirs, origin) in matched_parameters(result, other, base):
            vectors = [_trim(param.float() - origin, density), _trim(theirs - origin, density)]
            elected = torch.sign(shares[0] * vectors[0] + shares[1] * vectors[1])
            total = torch.zeros_like(origin)
            mass = torch.zeros_like(origin)
            for share, vector in zip(shares, vectors):
                agrees = ((torch.sign(vector) == elected) & (vector != 0)).float()
                total += share * agrees * vector
                mass += share * agrees
            merged = torch.where(mass > 0, total / mass.clamp(min=1e-12), torch.zeros_like(total))
            param.copy_((origin + float(scale) * merged).to(param.dtype))
    return result


def merge_dare(
    model: Any,
    other: Any,
    base: Any,
    *,
    density: float = 0.5,
    weight: float = 0.5,
    seed: int = 0,
    inplace: bool = False,
) -> Any:
    """DARE (Yu et al., 2024) with linear merging: each task vector keeps a random ``density`` share of its
    entries, rescaled by ``1 / density``; then ``base + (1 - weight) * t_model + weight * t_other``.

    At ``density=1`` this is :func:`merge_linear`. Deterministic for a ``seed``. Returns a copy unless ``inplace``.
    """
    _check_density(density)
    _check_weight(weight)
    generator = torch.Generator().manual_seed(int(seed))
    result = working_copy(model, inplace)
    with torch.no_grad():
        for _, param, (theirs, origin) in matched_parameters(result, other, base):
            merged = origin.clone()
            for share, tuned in ((1.0 - float(weight), param.float()), (float(weight), theirs)):
                keep = torch.rand(origin.shape, generator=generator).to(origin.device) < density
                merged += share * (tuned - origin) * keep / density
            param.copy_(merged.to(param.dtype))
    return result


def _trim(vector: torch.Tensor, density: float) -> torch.Tensor:
    """``vector`` with all but its ``density`` share of largest-magnitude entries set to zero."""
    keep = math.ceil(density * vector.numel())
    if keep >= vector.numel():
        return vector
    kept = torch.topk(vector.abs().flatten(), keep, sorted=False).indices
    trimmed = torch.zeros_like(vector).flatten()
    trimmed[kept] = vector.flatten()[kept]
    return trimmed.view_as(vector)


def _check_density(density: float) -> None:
    if not 0.0 < float(density) <= 1.0:
        raise EvaluationError(f"density must be in (0, 1], got {density}.")


def _check_weight(weight: float) -> None:
    if not math.isfinite(float(weight)):
        raise EvaluationError(f"weight must be a finite number, got {weight}.")
