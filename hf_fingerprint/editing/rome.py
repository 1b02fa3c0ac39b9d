"""ROME (arXiv 2202.05262) with R-ROME's consistent keys: one rank-one update per fingerprint, one layer.

For each fingerprint in turn, with its key k and target output z at the edited layer:
r = z - (current output), u = C0^-1 k (or k when ``use_statistics`` is off, the default),
dW = r u^T / (u^T k). Keys at the edited layer do not depend on its down_proj, so the current output after
earlier edits is computed exactly without another forward pass.
"""

from __future__ import annotations

import torch

from .context import EditContext
from .delta import EditDelta


def edit(context: EditContext) -> list[EditDelta]:
    layer = context.layers[len(context.layers) // 2] if len(context.layers) > 1 else context.layers[0]
    z = context.target_values(layer)
    keys, outputs = context.capture(key_layers=[layer], output_layers=[layer])
    K, current = keys[layer], outputs[layer].clone()
    inverse = None
    if context.options.get("use_statistics", False):
        inverse = torch.linalg.inv(context.statistics(layer).double() + 1e-6 * torch.eye(K.shape[1])).float()
    us, rs = [], []
    for j in range(K.shape[0]):
        k = K[j]
        u = inverse @ k if inverse is not None else k.clone()
        u = u / (u @ k)
        r = z[j] - current[j]
        current += (K @ u)[:, None] * r[None, :]  # how this edit moves every fingerprint's output
        us.append(u)
        rs.append(r)
    delta = EditDelta(context.module_name(layer), torch.stack(rs, 1), torch.stack(us, 1))
    context.apply(delta)
    return [delta]
