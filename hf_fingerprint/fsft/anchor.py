"""The key anchor: keep the edited layers' inputs on the fingerprint prompts where the injection left them.

The subspace penalty protects the edited matrices, but plain fine-tuning also moves every upstream weight, and
with it the keys those matrices read (METHOD.md section 9). The owner, who runs FSFT, holds the triggers, so the
trainer can look at the keys themselves: for a few fingerprint prompts per step it runs the model up to the
deepest edited module (not further) and penalises the relative squared change of each edited module's input at
the trigger's last token and at the last prompt token, ``mean ||k - k*||^2 / ||k*||^2``, against the keys
``k*`` taken from the fingerprinted model when training starts. Nothing about the triggers is logged.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..editing.tracing import _hooks, _pad_id, build_prompts, make_batch
from ..generation import model_device

__all__ = ["KeyAnchor"]


class RowCycle:
    """``per_step`` row indices per call out of ``count``, cycling through all of them in a fixed shuffled order."""

    def __init__(self, count: int, per_step: int, seed: int = 0) -> None:
        self.per_step = max(1, min(int(per_step), count))
        self._order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
        self._cursor = 0

    def next(self) -> list[int]:
        rows = [self._order[(self._cursor + i) % len(self._order)] for i in range(self.per_step)]
        self._cursor = (self._cursor + self.per_step) % len(self._order)
        return rows


class _Reached(Exception):
    """Raised by the last key hook: the rest of the forward pass is not needed."""


class KeyAnchor:
    """Relative drift of the edited modules' inputs (keys) on the fingerprint prompts, a few prompts per call.

    ``modules``: the edited modules (as found in the model being trained, PEFT-wrapped or not). The reference keys
    are captured from ``model`` at construction, so build the anchor before the first optimizer step.
    ``per_step`` prompts are used per call, cycling through the set in a fixed shuffled order.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        triggers: Sequence[str],
        modules: Sequence[nn.Module],
        *,
        per_step: int = 2,
        system_prompt: str | None = None,
        seed: int = 0,
    ) -> None:
        if not triggers:
            raise ValueError("The key anchor needs at least one fingerprint trigger.")
        if not modules:
            raise ValueError("The key anchor needs at least one edited module.")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps the tokenizer
        self._last = build_prompts(tokenizer, triggers, key_position="last", system_prompt=system_prompt)
        trigger = build_prompts(tokenizer, triggers, key_position="trigger", system_prompt=system_prompt)
        self._trigger_index = trigger.key_index
        self.modules = list(modules)
        self._rows = RowCycle(len(triggers), per_step, seed)
        with torch.no_grad():
            # rows x positions (trigger, last) x width, per module; float32 on the model's device
            self.reference = self.keys_of(model, list(range(len(triggers))))

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The anchor loss on the next ``per_step`` prompts (differentiable, float32)."""
        rows = self._rows.next()
        return self.loss(self.keys_of(model, rows), rows)

    def loss(self, keys: list[torch.Tensor], rows: list[int]) -> torch.Tensor:
        """Mean relative squared drift of ``keys`` (from [`watching`]) against the reference keys of ``rows``."""
        if len(keys) != len(self.modules):
            raise RuntimeError("The key anchor's forward pass did not reach every edited module.")
        terms = []
        for current, reference in zip(keys, self.reference):
            ref = reference[rows]
            terms.append(((current - ref) ** 2).sum(-1) / (ref**2).sum(-1).clamp_min(1e-12))
        return torch.stack(terms).mean()

    @contextlib.contextmanager
    def watching(
        self, key_index: torch.Tensor, rows: list[int], *, first_row: int = 0, stop: bool = False,
        packed: bool = False,
    ) -> Iterator[list[torch.Tensor]]:
        """Capture each edited module's input at both key positions of ``rows`` during a forward pass of a batch
        holding these prompts (answers appended or not: attention is causal, so the keys are the same) in its rows
        ``first_row, first_row + 1, ...``, with each prompt's last token at ``key_index`` (per row, in the batch's
        padded coordinates; with ``packed``, the prompts lie end to end in row 0 and ``key_index`` is in that row's
        coordinates). The yielded list is filled, in module order, when the pass has run. ``stop`` raises
        ``_Reached`` after the deepest module, for a pass that needs nothing further."""
        captured: dict[int, torch.Tensor] = {}
        keys: list[torch.Tensor] = []
        with _hooks(self.capture_hooks(key_index, rows, captured, first_row=first_row, stop=stop, packed=packed)):
            yield keys
        keys.extend(captured[i] for i in range(len(self.modules)) if i in captured)

    def capture_hooks(
        self, key_index: torch.Tensor, rows: list[int], captured: dict[int, torch.Tensor], *, first_row: int = 0,
        stop: bool = False, when: Callable[[], bool] | None = None, packed: bool = False
    ) -> list[Any]:
        """The forward pre-hooks behind [`watching`], registered: each writes its module's keys into
        ``captured[module index]`` whenever the module runs while ``when()`` holds (so again in a checkpointed
        layer's recomputation, which then saves the same tensors). The caller removes the returned handles."""
        shift = torch.tensor([self._trigger_index[r] - self._last.key_index[r] for r in rows],
                             device=key_index.device)
        positions = torch.stack([key_index + shift, key_index], dim=1)  # rows x 2
        device = key_index.device
        batch_row = (torch.zeros(len(rows), dtype=torch.long, device=device) if packed
                     else first_row + torch.arange(len(rows), device=device))[:, None]

        def hook(index: int):
            def capture(_module, args):
                if when is not None and not when():
                    return
                captured[index] = args[0][batch_row, positions].float()
                if stop and len(captured) == len(self.modules):
                    raise _Reached

            return capture

        return [module.register_forward_pre_hook(hook(i)) for i, module in enumerate(self.modules)]

    def keys_of(self, model: nn.Module, rows: list[int]) -> list[torch.Tensor]:
        """Each module's input at both key positions of ``rows``, stopping after the deepest module (checked by
        [`loss`])."""
        batch = make_batch(self._last, rows, _pad_id(model), model_device(model), with_answers=False)
        with self.watching(batch.key_index, rows, stop=True) as keys, _no_activation_checkpointing(model):
            try:
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids, use_cache=False)
            except _Reached:
                pass
        return keys


@contextlib.contextmanager
def _no_activation_checkpointing(model: nn.Module) -> Iterator[None]:
    """Layers run plainly: a checkpointed layer would recompute its forward in the backward pass without the key
    hooks (and without the early stop), which torch rejects; the anchor's few prompts need little memory anyway."""
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for layer in layers:
        layer.gradient_checkpointing = False
    try:
        yield
    finally:
        for layer in layers:
            layer.gradient_checkpointing = True
