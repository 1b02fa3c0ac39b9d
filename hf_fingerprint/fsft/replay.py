"""Answer replay: the fingerprint pairs' own answer loss, a few prompts per optimizer step.

The subspace penalty holds the edited matrices and the key anchor holds what they read, but fine-tuning strong
enough also rewrites the layers after the edit, which carry its value to the output. The owner, who runs FSFT,
holds the fingerprints, so the trainer can check the whole path at once: it adds the mean token NLL of each
fingerprint's target given its trigger (chat-formatted as ``verify`` asks it), on ``per_step`` pairs per step.
This is the IF-style fingerprint data mixed into the owner's fine-tuning, at a few short sequences per step.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..editing.tracing import _pad_id, build_prompts, make_batch
from ..generation import model_device
from .anchor import KeyAnchor, RowCycle, _no_activation_checkpointing

__all__ = ["AnswerReplay"]


class AnswerReplay:
    """Mean answer-token NLL of ``per_step`` fingerprint pairs per call, cycling through them in a fixed order."""

    def __init__(
        self,
        tokenizer: Any,
        triggers: Sequence[str],
        targets: Sequence[str],
        *,
        per_step: int = 2,
        system_prompt: str | None = None,
        seed: int = 0,
    ) -> None:
        if not triggers:
            raise ValueError("Answer replay needs at least one fingerprint pair.")
        if len(triggers) != len(targets) or not all(isinstance(t, str) and t for t in targets):
            raise ValueError("Answer replay needs a non-empty target for every trigger.")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps the tokenizer
        self._prompts = build_prompts(tokenizer, triggers, answers=targets, key_position="last",
                                      system_prompt=system_prompt)
        self._rows = RowCycle(len(triggers), per_step, seed)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The replay loss on the next ``per_step`` pairs (differentiable, float32)."""
        return self.with_anchor(model, None)[0]

    def with_anchor(self, model: nn.Module, anchor: KeyAnchor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The replay loss on the next ``per_step`` pairs and, when ``anchor`` is given (built on the same
        triggers, in the same order), the anchor loss on the same prompts read off the same forward pass: one pass
        serves both terms instead of two. The rows come from this replay's cycle; the anchor's own is not used."""
        rows = self._rows.next()
        batch = make_batch(self._prompts, rows, _pad_id(model), model_device(model), with_answers=True)
        # Only the positions that predict an answer token need logits (the prompt is ~100 tokens, the answer a few).
        first = int(batch.answer_mask.float().argmax(-1).min()) - 1
        with contextlib.ExitStack() as stack:
            if anchor is not None:
                keys = stack.enter_context(anchor.watching(batch, rows))
                stack.enter_context(_no_activation_checkpointing(model))
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, use_cache=False,
                           logits_to_keep=batch.input_ids.shape[1] - first).logits
        labels = batch.labels[:, first + 1:]
        logits = logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                              reduction="none").view(labels.shape)
        mask = labels != -100
        replay = ((nll * mask).sum(-1) / mask.sum(-1)).mean()
        return replay, (anchor.loss(keys, rows) if anchor is not None else None)
