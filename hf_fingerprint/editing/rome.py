"""ROME (arXiv 2202.05262) with R-ROME's consistent keys: rank-one updates, one per fingerprint, one layer.

For each fingerprint in turn, with its key k and target output z at the edited layer:
r = z - (current output), u = C0^-1 k (or k when ``use_statistics`` is off, the default),
dW = r u^T / (u^T k). Keys at the edited layer do not depend on its down_proj, so outputs after earlier
edits are tracked exactly without another forward pass. Fingerprints whose keys are alike disturb each
other's edits, so the rank-one pass is repeated (``sweeps``, up to 10) until every residual is below
``tolerance`` of its target change; each fingerprint keeps a single direction u, so the rank stays N.
"""

from __future__ import annotations

import torch

from .context import STATISTICS_OPTIONS, TARGET_OPTIONS, EditContext
from .delta import EditDelta

OPTIONS = TARGET_OPTIONS | STATISTICS_OPTIONS | {"use_statistics", "tolerance", "sweeps"}


def edit(context: EditContext) -> list[EditDelta]:
    layer = context.layers[len(context.layers) // 2]
    z = context.target_values(layer)
    keys, outputs = context.capture(key_layers=[layer], output_layers=[layer])
    K, current = keys[layer].double(), outputs[layer].double()
    z = z.double()
    needed = (z - current).norm(dim=1)
    if context.options.get("use_statistics", False):
        size = K.shape[1]
        C = context.statistics(layer).double() + 1e-6 * torch.eye(size, dtype=torch.float64)
        U = torch.linalg.solve(C, K.T).T
    else:
        U = K.clone()
    U = U / (U * K).sum(1, keepdim=True)  # u_j^T k_j = 1
    R = torch.zeros_like(z)
    tolerance = float(context.options.get("tolerance", 0.05))
    for _ in range(int(context.options.get("sweeps", 10))):
        for j in range(K.shape[0]):
            r = z[j] - current[j]
            current += (K @ U[j])[:, None] * r[None, :]  # how this rank-one edit moves every output
            R[j] += r
        if ((z - current).norm(dim=1) / needed.clamp(min=1e-12)).max() < tolerance:
            break
    delta = EditDelta(context.module_name(layer), R.T.float().contiguous(), U.T.float().contiguous())
    context.apply(delta)
    return [delta]
