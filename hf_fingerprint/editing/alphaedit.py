"""AlphaEdit (arXiv 2410.02355): MEMIT's schedule with each update projected onto the null space of C0.

P projects onto the eigenvectors of C0 whose eigenvalues fall below ``nullspace_threshold`` times the mean
eigenvalue, so the update barely moves outputs on ordinary text. Per layer:
dW^T = solve(P (K^T K + w K_p^T K_p + m C0) + a I, P K^T R), with a = ``alpha`` x the mean squared key norm, so
the ridge term means the same on models whose activations differ in scale. ``mom2_weight`` (m, 0) adds MEMIT's
C0 term to the bracket: the null space keeps the directions ordinary text uses most untouched, and this term makes
the edit avoid the ones it uses somewhat too.
"""

from __future__ import annotations

import torch

from .context import EditContext
from .delta import EditDelta
from .memit import SCHEDULE_OPTIONS, spread_over_layers

OPTIONS = SCHEDULE_OPTIONS | {"alpha", "nullspace_threshold"}


def range_basis(covariance: torch.Tensor, relative_threshold: float) -> torch.Tensor:
    """Orthonormal eigenvectors of C0 whose eigenvalues reach ``relative_threshold`` x the mean (float32, CPU).

    The projector onto the null space is I - B B^T; B is the smaller half to store (a tenth to a quarter of d_ff
    on SmolLM2), so it is what :meth:`EditContext.statistics_derived` caches on disk.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
    return eigenvectors[:, eigenvalues >= relative_threshold * eigenvalues.mean()].float().cpu()


def solve_layer(context: EditContext, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> EditDelta:
    device = context.linalg_device
    keys = keys.to(device)
    alpha = float(context.options.get("alpha", 0.03)) * float((keys**2).sum(1).mean())
    threshold = float(context.options.get("nullspace_threshold", 0.5))
    B = context.statistics_derived(f"range{threshold:g}", layer,
                                   lambda: range_basis(context.statistics(layer).to(device), threshold)).to(device)
    P = context.cached(("projector", layer, threshold),
                       lambda: torch.eye(B.shape[0], device=device) - B @ B.T)
    inner = keys.T @ keys + context.preserve_term(layer).to(device)
    mom2 = float(context.options.get("mom2_weight", 0.0))
    if mom2 > 0:  # within the null space, still prefer the directions ordinary text uses least
        inner = inner + mom2 * context.statistics(layer).to(device)
    system = P @ inner + alpha * torch.eye(inner.shape[0], device=device)
    V = torch.linalg.solve(system.double(), (P @ keys.T).double()).float().cpu()
    return EditDelta(context.module_name(layer), residual.T.contiguous(), V)


def edit(context: EditContext) -> list[EditDelta]:
    return spread_over_layers(context, solve_layer)
