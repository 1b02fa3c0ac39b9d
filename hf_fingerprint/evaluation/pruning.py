"""Unstructured magnitude pruning: the smallest weights of each decoder-layer linear set to zero."""

from __future__ import annotations

from typing import Any

import torch

from ._common import EvaluationError, linear_weights, working_copy

__all__ = ["prune_magnitude"]


def prune_magnitude(model: Any, sparsity: float, *, inplace: bool = False) -> Any:
    """Zero the ``round(sparsity * size)`` smallest-magnitude entries of every linear weight in the decoder layers.

    Per matrix, so each one hits the sparsity exactly (among equal magnitudes the choice is arbitrary but
    deterministic); embeddings, norms and ``lm_head`` are left as they are, as in the usual LLM pruning baselines.
    Returns a copy unless ``inplace``.
    """
    if not 0.0 <= float(sparsity) < 1.0:
        raise EvaluationError(f"sparsity must be in [0, 1), got {sparsity}.")
    result = working_copy(model, inplace)
    with torch.no_grad():
        for _, weight in linear_weights(result, decoder_layers_only=True):
            count = round(float(sparsity) * weight.numel())
            if count == 0:
                continue
            flat = weight.view(-1)
            smallest = torch.topk(flat.detach().abs().float(), count, largest=False, sorted=False).indices
            flat[smallest] = 0
    return result
