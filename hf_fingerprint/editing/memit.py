"""MEMIT (arXiv 2210.07229): spread each target value over several layers by least squares.

For layer i of n, the residual R_i = (z - current output of the last layer) / (n - i) is written into
down_proj with dW = R^T K (lambda C0 + K^T K + w K_p^T K_p)^-1, K the trigger keys and K_p the keys to
preserve (near misses). Layers are edited in order and keys recomputed after each.
"""

from __future__ import annotations

import torch

from .context import EditContext
from .delta import EditDelta


def solve_layer(context: EditContext, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> EditDelta:
    """The least-squares update of one layer (``keys``: N x d_ff, ``residual``: N x d_model)."""
    lam = float(context.options.get("mom2_weight", 100.0))
    system = lam * context.statistics(layer) + keys.T @ keys
    system += context.preserve_term(layer)
    V = torch.linalg.solve(system.double(), keys.T.double()).float()
    return EditDelta(context.module_name(layer), residual.T.contiguous(), V)


def edit(context: EditContext) -> list[EditDelta]:
    return spread_over_layers(context, solve_layer)


def spread_over_layers(context: EditContext, solve) -> list[EditDelta]:
    """The MEMIT schedule shared with AlphaEdit: optimise values at the last layer, then edit layer by layer."""
    last = context.layers[-1]
    z = context.target_values(last)
    deltas = []
    for position, layer in enumerate(context.layers):
        keys, outputs = context.capture(key_layers=[layer], output_layers=[last])
        residual = (z - outputs[last]) / (len(context.layers) - position)
        drifted = context.drifted_keys(layer)  # the same residual for the keys of a perturbed model
        delta = solve(context, layer, torch.cat([keys[layer], *drifted]), residual.repeat(1 + len(drifted), 1))
        context.apply(delta)
        deltas.append(delta)
    return deltas
