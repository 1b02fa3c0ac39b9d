"""MEMIT (arXiv 2210.07229): spread each target value over several layers by least squares.

For layer i of n, the residual R_i = (z - current output of the last layer) / (n - i) is written into
down_proj with dW = R^T K (lambda C0 + K^T K + w K_p^T K_p)^-1, K the trigger keys and K_p the keys to
preserve (near misses). Layers are edited in order and keys recomputed after each.
"""

from __future__ import annotations

import torch

from .context import PRESERVE_OPTIONS, STATISTICS_OPTIONS, TARGET_OPTIONS, EditContext
from .delta import EditDelta, merge_deltas

# What the MEMIT schedule reads (shared with AlphaEdit and RLEdit).
SCHEDULE_OPTIONS = TARGET_OPTIONS | STATISTICS_OPTIONS | PRESERVE_OPTIONS | {
    "mom2_weight", "edit_passes", "pass_tolerance", "drift_samples", "drift_scale", "drift_seed"}
OPTIONS = SCHEDULE_OPTIONS


def solve_layer(context: EditContext, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> EditDelta:
    """The least-squares update of one layer (``keys``: N x d_ff, ``residual``: N x d_model)."""
    device = context.linalg_device
    keys = keys.to(device)
    system = context.mom2_weight * context.statistics(layer).to(device) + keys.T @ keys
    system += context.preserve_term(layer).to(device)
    V = torch.linalg.solve(system.double(), keys.T.double()).float().cpu()
    return EditDelta(context.module_name(layer), residual.T.contiguous(), V)


def edit(context: EditContext) -> list[EditDelta]:
    return spread_over_layers(context, solve_layer)


def spread_over_layers(context: EditContext, solve) -> list[EditDelta]:
    """The MEMIT schedule shared with AlphaEdit and RLEdit: optimise values at the last layer, then edit layer by
    layer. A regularised solve realises only part of z; while some fingerprint still misses more than
    ``pass_tolerance`` (0.1) of its change, the remainder is spread again, up to ``edit_passes`` sweeps (3 for
    trigger keys, whose edits fall short more often; 1 for ``"last"``). Each module ends with one delta."""
    last = context.layers[-1]
    z = context.target_values(last)
    position = context.options.get("key_position", "last")
    trigger_keys = "trigger" in position.split("+") or (position == "auto" and context.options.get("trigger_keys", 0) > 0)
    passes = int(context.options.get("edit_passes", 3 if trigger_keys else 1))
    tolerance = float(context.options.get("pass_tolerance", 0.1))
    deltas: list[EditDelta] = []
    start = None
    ahead = None  # the next sweep's first capture, taken by the convergence check
    for sweep in range(passes):
        for index, layer in enumerate(context.layers):
            keys, outputs = ahead or context.capture(key_layers=[layer], output_layers=[last])
            ahead = None
            if start is None:
                start = outputs[last]
            residual = (z - outputs[last]) / (len(context.layers) - index)
            drifted = context.drifted_keys(layer)  # the same residual for the keys of a perturbed model
            delta = solve(context, layer, torch.cat([keys[layer], *drifted]), residual.repeat(1 + len(drifted), 1))
            context.apply(delta)
            deltas.append(delta)
        if sweep + 1 < passes:
            ahead = context.capture(key_layers=[context.layers[0]], output_layers=[last])
            missing = (z - ahead[1][last]).norm(dim=1) / (z - start).norm(dim=1).clamp(min=1e-12)
            if float(missing.max()) <= tolerance:
                break
    context.options["edit_sweeps"] = sweep + 1
    return merge_deltas(deltas)
