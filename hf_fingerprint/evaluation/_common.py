"""Shared helpers of the evaluation modules: working copies, the linear weights a modification touches, errors."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from ..editing.layout import base_model, find_layout
from ..errors import EvaluationError


def working_copy(model: Any, inplace: bool) -> Any:
    """``model`` itself when ``inplace``, else a deep copy (the caller's model is never touched)."""
    return model if inplace else copy.deepcopy(model)


def linear_weights(
    model: Any, *, decoder_layers_only: bool = False, skip_modules: Sequence[str] = ()
) -> list[tuple[str, nn.Parameter]]:
    """``(module name, weight)`` of every ``nn.Linear``, each shared (tied) weight once.

    ``decoder_layers_only`` keeps the linears inside the decoder layers (attention and MLP projections);
    ``skip_modules`` drops modules whose last name part is listed (e.g. ``"lm_head"``).
    """
    inner = base_model(model)
    prefix = find_layout(inner).layers_path + "." if decoder_layers_only else ""
    seen: set[int] = set()
    found = []
    for name, module in inner.named_modules():
        if not isinstance(module, nn.Linear) or not name.startswith(prefix):
            continue
        if name.split(".")[-1] in skip_modules or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        found.append((name, module.weight))
    if not found:
        raise EvaluationError(f"{type(inner).__name__} has no nn.Linear weights to modify.")
    return found


def relative_weight_change(model: Any, other: Any, *, skip_modules: Sequence[str] = ()) -> float:
    """``||W_other - W_model|| / ||W_model||`` over all linear weights (Frobenius norms, float64)."""
    theirs = dict(linear_weights(other, skip_modules=skip_modules))
    diff = norm = 0.0
    for name, weight in linear_weights(model, skip_modules=skip_modules):
        if name not in theirs or theirs[name].shape != weight.shape:
            raise EvaluationError(f"The two models differ in structure at {name!r}.")
        w = weight.detach().double()
        diff += float(((theirs[name].detach().double().to(w.device) - w) ** 2).sum())
        norm += float((w**2).sum())
    return (diff / max(norm, 1e-300)) ** 0.5


def matched_parameters(model: Any, *others: Any) -> list[tuple[str, nn.Parameter, list[torch.Tensor]]]:
    """Each floating-point parameter of ``model`` with the same-named tensor of every model in ``others``."""
    states = [base_model(other).state_dict() for other in others]
    matched = []
    for name, param in base_model(model).named_parameters():
        if not param.is_floating_point():
            continue
        tensors = []
        for state in states:
            tensor = state.get(name)
            if tensor is None or tensor.shape != param.shape:
                raise EvaluationError(
                    f"Cannot merge: parameter {name!r} is missing or has another shape in one of the models. "
                    "Merging needs fine-tunes of the same base model (same architecture and vocabulary)."
                )
            tensors.append(tensor.detach().to(device=param.device, dtype=torch.float32))
        matched.append((name, param, tensors))
    return matched
