"""AlphaEdit (arXiv 2410.02355): MEMIT's schedule with each update projected onto the null space of C0.

P projects onto the eigenvectors of C0 whose eigenvalues fall below ``nullspace_threshold`` times the mean
eigenvalue, so the update barely moves outputs on ordinary text. Per layer:
dW^T = solve(P (K^T K + w K_p^T K_p) + a I, P K^T R), with a = ``alpha`` x the mean squared key norm, so
the ridge term means the same on models whose activations differ in scale.
"""

from __future__ import annotations

import torch

from .context import EditContext
from .delta import EditDelta
from .memit import spread_over_layers


def null_space_projector(covariance: torch.Tensor, relative_threshold: float) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
    keep = eigenvalues < relative_threshold * eigenvalues.mean()
    basis = eigenvectors[:, keep]
    return (basis @ basis.T).float()


def solve_layer(context: EditContext, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> EditDelta:
    alpha = float(context.options.get("alpha", 0.03)) * float((keys**2).sum(1).mean())
    threshold = float(context.options.get("nullspace_threshold", 0.5))
    P = context.cached(("projector", layer, threshold),
                       lambda: null_space_projector(context.statistics(layer), threshold))
    inner = keys.T @ keys + context.preserve_term(layer)
    system = P @ inner + alpha * torch.eye(inner.shape[0])
    V = torch.linalg.solve(system.double(), (P @ keys.T).double()).float()
    return EditDelta(context.module_name(layer), residual.T.contiguous(), V)


def edit(context: EditContext) -> list[EditDelta]:
    return spread_over_layers(context, solve_layer)
