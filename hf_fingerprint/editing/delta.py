"""The result of an edit on one parameter: low-rank factors ``dW = U @ V.T``, or a dense update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InjectionError


@dataclass
class EditDelta:
    """Update of one parameter: ``U @ V.T`` (an ``nn.Linear`` weight, ``out x in``) or ``dense_update``.

    ``U`` is ``out x r`` and ``V`` is ``in x r``, both float32 on the CPU. As a PEFT LoRA adapter this is
    ``lora_B = U``, ``lora_A = V.T`` with ``r = lora_alpha = rank`` (scaling 1).

    Full fine-tuning changes parameters no low-rank form holds (embeddings, norms, whole matrices): such a
    delta has ``U = V = None`` and ``dense_update`` set. ``module`` then names a module whose ``weight``
    changed, or the full name of any other parameter (a bias, say); :meth:`parameter` resolves either.
    """

    module: str
    U: torch.Tensor | None
    V: torch.Tensor | None
    dense_update: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.U is None) != (self.V is None) or (self.U is None) == (self.dense_update is None):
            raise InjectionError(f"An update of '{self.module}' needs either both factors U and V or a dense_update.")

    @property
    def is_dense(self) -> bool:
        return self.dense_update is not None

    @property
    def rank(self) -> int:
        """The number of factor columns; a dense update has none and cannot become a LoRA adapter."""
        if self.U is None:
            raise InjectionError(
                f"The update of '{self.module}' is dense (full fine-tuning), not low-rank, so it cannot be a LoRA "
                f"adapter: save the merged model instead (model.save_pretrained), or inject with lora=True."
            )
        return int(self.U.shape[1])

    def dense(self) -> torch.Tensor:
        """The full update in float32 (``out x in`` for a weight matrix)."""
        if self.dense_update is not None:
            return self.dense_update
        return self.U @ self.V.T

    def parameter(self, model: Any) -> torch.nn.Parameter:
        """The parameter of ``model`` (or of the plain model behind a PEFT wrapper) this delta updates."""
        from .layout import base_model

        root = base_model(model)
        try:
            return root.get_submodule(self.module).weight
        except AttributeError:
            return root.get_parameter(self.module)


def merge_deltas(deltas: list[EditDelta]) -> list[EditDelta]:
    """One low-rank delta per module: the factors of several edits of one module side by side (they add up)."""
    grouped: dict[str, list[EditDelta]] = {}
    for delta in deltas:
        grouped.setdefault(delta.module, []).append(delta)
    return [group[0] if len(group) == 1 else
            EditDelta(name, torch.cat([d.U for d in group], 1), torch.cat([d.V for d in group], 1))
            for name, group in grouped.items()]
