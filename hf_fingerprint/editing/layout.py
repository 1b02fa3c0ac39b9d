"""Where the editable weights of a decoder-only model live, found from its structure (never its name)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError

MLP_MODULES = ("down_proj", "up_proj", "gate_proj")


@dataclass(frozen=True)
class ModelLayout:
    """Names of a model's decoder layers; ``module(i, "down_proj")`` is the edited linear of layer ``i``."""

    layers_path: str  # e.g. "model.layers"
    num_layers: int
    hidden_size: int
    intermediate_size: int

    def layer_name(self, index: int) -> str:
        return f"{self.layers_path}.{index}"

    def module_name(self, index: int, module: str = "down_proj") -> str:
        return f"{self.layers_path}.{index}.mlp.{module}"

    def default_layers(self) -> list[int]:
        """Five consecutive layers starting a fifth of the way down (fewer in shallow models).

        EasyEdit's Llama defaults (layers 4-8 of 32) and our SmolLM2 measurements (6-10 of 30) both sit there.
        """
        count = min(5, max(1, self.num_layers // 3))
        start = max(1, round(0.2 * self.num_layers)) if self.num_layers > 2 else 0
        start = min(start, self.num_layers - count)
        return list(range(start, start + count))


def base_model(model: Any) -> nn.Module:
    """The plain transformers model behind a PEFT wrapper, if any."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def find_layout(model: Any) -> ModelLayout:
    """Locate the decoder layers and check each has an ``mlp`` with linear gate/up/down projections."""
    inner = base_model(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", type(inner).__name__)
    candidates = [
        (name, module)
        for name, module in inner.named_modules()
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers" and len(module) > 0
    ]
    for name, layers in candidates:
        mlp = getattr(layers[0], "mlp", None)
        if mlp is None or not all(isinstance(getattr(mlp, m, None), nn.Linear) for m in MLP_MODULES):
            continue
        down = mlp.down_proj
        return ModelLayout(
            layers_path=name,
            num_layers=len(layers),
            hidden_size=down.out_features,
            intermediate_size=down.in_features,
        )
    raise UnsupportedArchitectureError(
        f"Model type '{model_type}' is not supported: editing needs decoder layers with an MLP made of "
        f"nn.Linear gate_proj/up_proj/down_proj (Llama, Mistral, Qwen2/3, Gemma 2/3 and similar)."
    )


def get_module(model: Any, name: str) -> nn.Module:
    return base_model(model).get_submodule(name)


def validate_layers(layout: ModelLayout, layers: list[int] | None) -> list[int]:
    layers = layout.default_layers() if layers is None else sorted(int(i) for i in layers)
    if not layers or len(set(layers)) != len(layers) or layers[0] < 0 or layers[-1] >= layout.num_layers:
        raise UnsupportedArchitectureError(
            f"layers={layers} is invalid for a model with {layout.num_layers} layers: give distinct indices in "
            f"0..{layout.num_layers - 1}."
        )
    return layers


def param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
