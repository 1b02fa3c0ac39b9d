"""The result of an edit on one weight matrix, as low-rank factors: dW = U @ V.T."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EditDelta:
    """Update of one ``nn.Linear`` weight (shape ``out x in``) as ``U @ V.T``.

    ``U`` is ``out x r`` and ``V`` is ``in x r``, both float32 on the CPU. As a PEFT LoRA adapter this is
    ``lora_B = U``, ``lora_A = V.T`` with ``r = lora_alpha = rank`` (scaling 1).
    """

    module: str
    U: torch.Tensor
    V: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    def dense(self) -> torch.Tensor:
        """The full ``out x in`` update in float32."""
        return self.U @ self.V.T
