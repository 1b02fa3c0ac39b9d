"""What an editor works with: the model, its layout, the fingerprint prompts, statistics, and how to apply an edit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .covariance import layer_statistics
from .delta import EditDelta
from .layout import ModelLayout, get_module
from .tracing import Prompts, capture, optimise_values

VALUE_OPTIONS = ("value_steps", "value_lr", "clamp_factor", "value_weight_decay")


@dataclass
class EditContext:
    """Shared state of one injection. Editors read ``options`` and call these methods; they never copy them."""

    model: Any
    tokenizer: Any
    layout: ModelLayout
    layers: list[int]
    requests: Prompts
    preserve: Prompts | None = None
    options: dict[str, Any] = field(default_factory=dict)
    module: str = "down_proj"
    progress: bool = True
    _cache: dict[Any, Any] = field(default_factory=dict)

    def module_name(self, layer: int) -> str:
        return self.layout.module_name(layer, self.module)

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def capture(self, *, key_layers=(), output_layers=()):
        """Keys and layer outputs of the fingerprint prompts under the current weights."""
        return capture(self.model, self.layout, self.requests, key_layers=key_layers,
                       output_layers=output_layers, module=self.module)

    def target_values(self, layer: int) -> torch.Tensor:
        """z: the output of ``layer`` at each key position that makes the model answer its target."""
        o = self.options
        z, _ = optimise_values(
            self.model, self.layout, self.requests, layer,
            steps=int(o.get("value_steps", 25)),
            lr=float(o.get("value_lr", 0.5)),
            clamp_factor=float(o.get("clamp_factor", 4.0)),
            weight_decay=float(o.get("value_weight_decay", 1e-3)),
        )
        return z

    def statistics(self, layer: int) -> torch.Tensor:
        """C0 of ``layer`` (computed for all edited layers at once, then cached in memory and on disk)."""
        if ("stats", layer) not in self._cache:
            stats = layer_statistics(
                self.model, self.tokenizer, self.layout, self.layers,
                corpus=self.options.get("corpus"),
                module=self.module,
                max_tokens=int(self.options.get("stats_tokens", 20_000)),
                progress=self.progress,
            )
            for index, value in stats.items():
                self._cache[("stats", index)] = value
        return self._cache[("stats", layer)]

    def preserve_term(self, layer: int) -> torch.Tensor:
        """w K_p^T K_p for the keys to preserve (near misses) at ``layer``, zero when there are none.

        Keys of every edited layer are captured in one pass, under the weights before the edit.
        """
        size = self.layout.intermediate_size
        if self.preserve is None or not self.preserve.ids:
            return torch.zeros(size, size)
        keys = self.cached(
            "preserve_keys",
            lambda: capture(self.model, self.layout, self.preserve, key_layers=self.layers, module=self.module)[0],
        )
        weight = float(self.options.get("preserve_weight", 10.0))
        K = keys[layer]
        return weight * (K.T @ K)

    def apply(self, delta: EditDelta, sign: float = 1.0) -> None:
        weight = get_module(self.model, delta.module).weight
        with torch.no_grad():
            weight.add_((sign * delta.dense()).to(weight.dtype).to(weight.device))
