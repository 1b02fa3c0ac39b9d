"""How unlike ordinary text a trigger's end looks to the edited layers: the score that picks trigger candidates."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .covariance import layer_statistics
from .layout import find_layout, validate_layers
from .tracing import build_prompts, capture


@torch.no_grad()
def trigger_distinctiveness(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    corpus: Any = None,
    stats_tokens: int = 20_000,
    batch_size: int = 32,
    progress: bool = True,
) -> torch.Tensor:
    """One score per text: the sum over the edited layers of k^T C0^-1 k at the text's last token.

    k is the ``down_proj`` input at the last token of the text inside a chat prompt (where a trigger-keyed edit
    is written) and C0 the covariance statistics ``inject`` uses (same corpus, same on-disk cache). Averaged over
    that corpus a token scores the key width per layer (by construction); a higher score is a key further from
    ordinary text's (``layers``, ``corpus`` and ``stats_tokens`` as for ``inject``).
    """
    if not texts:
        return torch.zeros(0)
    layout = find_layout(model)
    layers = validate_layers(layout, None if layers is None else list(layers))
    statistics = layer_statistics(model, tokenizer, layout, layers, corpus=corpus, max_tokens=stats_tokens,
                                  progress=progress)
    keys, _ = capture(model, layout, build_prompts(tokenizer, texts, key_position="trigger"), key_layers=layers,
                      batch_size=batch_size)
    score = torch.zeros(len(texts), dtype=torch.float64)
    for layer in layers:
        c0 = statistics[layer].double()
        ridge = 1e-6 * c0.diagonal().mean().clamp(min=1e-12)  # C0 can be rank-deficient on a small corpus
        factor = torch.linalg.cholesky(c0 + ridge * torch.eye(c0.shape[0], dtype=c0.dtype))
        whitened = torch.linalg.solve_triangular(factor, keys[layer].double().T, upper=False)
        score += whitened.pow(2).sum(0)
    return score.float()
