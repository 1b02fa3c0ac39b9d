"""Answer replay: the fingerprint pairs' own answer loss, a few prompts per optimizer step.

The subspace penalty holds the edited matrices and the key anchor holds what they read, but fine-tuning strong
enough also rewrites the layers after the edit, which carry its value to the output. The owner, who runs FSFT,
holds the fingerprints, so the trainer can check the whole path at once: it adds the mean token NLL of each
fingerprint's target given its trigger (chat-formatted as ``verify`` asks it), on ``per_step`` pairs per step.
This is the IF-style fingerprint data mixed into the owner's fine-tuning, at a few short sequences per step.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..editing.tracing import _pad_id, build_prompts
from ..generation import model_device
from .anchor import KeyAnchor, RowCycle, _no_activation_checkpointing

__all__ = ["AnswerReplay", "JointReplay"]

# Tensors of the training batch that the joint pass knows how to extend with the replay rows.
_JOINABLE = {"input_ids", "attention_mask", "labels", "position_ids"}


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

    def with_anchor(
        self, model: nn.Module, anchor: KeyAnchor | None, rows: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The replay loss on ``rows`` (default: the next ``per_step`` pairs) and, when ``anchor`` is given (built
        on the same triggers, in the same order), the anchor loss on the same prompts read off the same forward
        pass: one pass serves both terms instead of two. The anchor's own row cycle is not used."""
        rows = self._rows.next() if rows is None else rows
        ids, positions, key_index, keep, labels, owner = [], [], [], [], [], []
        for i, r in enumerate(rows):  # end to end in one row: no padding (the pass costs its tokens)
            prompt, answer = self._prompts.ids[r], self._prompts.answer_ids[r]
            start = len(ids)
            key_index.append(start + self._prompts.key_index[r])
            # Only the positions that predict an answer token need logits (the prompt is ~100 tokens, the answer
            # a few).
            keep.extend(range(start + len(prompt) - 1, start + len(prompt) + len(answer) - 1))
            labels.extend(answer)
            owner.extend([i] * len(answer))
            ids.extend(prompt + answer)
            positions.extend(range(len(prompt) + len(answer)))
        device = model_device(model)
        as_tensor = functools.partial(torch.tensor, dtype=torch.long, device=device)
        with contextlib.ExitStack() as stack:
            if anchor is not None:
                keys = stack.enter_context(anchor.watching(as_tensor(key_index), rows, packed=True))
                stack.enter_context(_no_activation_checkpointing(model))
            # Position ids that restart at 0 and no attention mask: transformers' packed-sequence format, in which
            # each prompt attends to itself only (tests/test_fsft.py checks it against each prompt's own pass).
            logits = model(input_ids=as_tensor([ids]), position_ids=as_tensor([positions]), use_cache=False,
                           logits_to_keep=as_tensor(keep)).logits[0].float()
        nll = F.cross_entropy(logits, as_tensor(labels), reduction="none")
        owner_t = as_tensor(owner)
        per_row = torch.zeros(len(rows), device=device).index_add(0, owner_t, nll)
        per_row = per_row / torch.bincount(owner_t, minlength=len(rows)).clamp_min(1)
        return per_row.mean(), (anchor.loss(keys, rows) if anchor is not None else None)

    def next_rows(self) -> list[int]:
        return self._rows.next()

    def row_lengths(self, rows: Sequence[int]) -> list[int]:
        """Token counts (prompt and answer) of ``rows``."""
        return [len(self._prompts.ids[r]) + len(self._prompts.answer_ids[r]) for r in rows]

    def joinable(self, inputs: dict[str, Any]) -> bool:
        """Whether the training batch ``inputs`` is one [`JointReplay`] can extend: a padded 2-D batch with an
        attention mask (not a padding-free one) and nothing else batched that it would have to extend."""
        ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
        if not (torch.is_tensor(ids) and ids.dim() == 2 and torch.is_tensor(mask) and mask.shape == ids.shape):
            return False
        return all(k in _JOINABLE or not torch.is_tensor(v) for k, v in inputs.items())

    def join(self, model: nn.Module, anchor: KeyAnchor | None, rows: list[int]) -> "JointReplay":
        """Hooks on ``model`` that append ``rows`` to the next forward call's batch (see [`JointReplay`])."""
        return JointReplay(self, model, anchor, rows)


class JointReplay:
    """The replay (and the key anchor) read off the training batch's own forward pass.

    A separate replay pass costs a whole forward and backward of kernel launches, which on a GPU running small
    batches is most of a step (Llama-3.2-3B shape, H200, batch 8: 1.74x the SFTTrainer step). Here a forward
    pre-hook appends the replay rows (right-padded, answers labelled) to the next forward call of ``model``, and a
    forward hook takes their answer NLL off the outputs and hands the trainer back the outputs of its own rows
    only, so the task loss, its token count and TRL's metrics are those of the batch alone. The key anchor's hooks
    capture during the joint forward call and again, after [`rearm`], in the backward pass (until [`remove`]), so
    that a checkpointed layer's recomputation saves what its forward saved.
    """

    def __init__(self, replay: AnswerReplay, model: nn.Module, anchor: KeyAnchor | None, rows: list[int]) -> None:
        self._replay, self._anchor, self.rows = replay, anchor, rows
        self.replay_loss: torch.Tensor | None = None
        self.keys: list[torch.Tensor] | None = None
        self._captured: dict[int, torch.Tensor] = {}
        self._shape: tuple[int, int] | None = None
        self._watching = False
        self._handles = [model.register_forward_pre_hook(self._extend, with_kwargs=True),
                         model.register_forward_hook(self._split, with_kwargs=True)]

    def rearm(self) -> None:
        """Let the key hooks capture again, in the backward pass's recomputation of checkpointed layers."""
        self._watching = self._shape is not None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The key hooks capture nothing inside (another forward pass of the model runs there)."""
        watching, self._watching = self._watching, False
        try:
            yield
        finally:
            self._watching = watching

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _extend(self, model, args, kwargs):
        if self._shape is not None or args:  # the first call only, and only with keyword inputs
            return None
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        batch, width = ids.shape
        prompts = self._replay._prompts
        rows = [prompts.ids[r] + prompts.answer_ids[r] for r in self.rows]
        total = max(width, *(len(r) for r in rows))
        fused = bool(kwargs.get("fused_lm_head", False))
        extra_ids = torch.full((len(rows), total), _pad_id(model), dtype=ids.dtype)
        extra_mask = torch.zeros((len(rows), total), dtype=mask.dtype)
        extra_labels = torch.full((len(rows), total), -100, dtype=torch.long)
        for b, (r, seq) in enumerate(zip(self.rows, rows)):
            extra_ids[b, : len(seq)] = torch.tensor(seq)
            extra_mask[b, : len(seq)] = 1
            extra_labels[b, len(prompts.ids[r]) : len(seq)] = torch.tensor(prompts.answer_ids[r])
        device = ids.device
        self._labels = extra_labels.to(device)
        self._shape = (batch, width)
        grow = total - width

        def widen(tensor: torch.Tensor, fill: int) -> torch.Tensor:
            return torch.nn.functional.pad(tensor, (0, grow), value=fill) if grow else tensor

        kwargs = dict(kwargs)
        kwargs["input_ids"] = torch.cat([widen(ids, _pad_id(model)), extra_ids.to(device)])
        kwargs["attention_mask"] = torch.cat([widen(mask, 0), extra_mask.to(device)])
        if kwargs.get("labels") is not None:  # ours only count where the outputs are per-token log-probs
            ours = self._labels if fused else torch.full_like(self._labels, -100)
            kwargs["labels"] = torch.cat([widen(kwargs["labels"], -100), ours.to(kwargs["labels"].dtype)])
        if kwargs.get("position_ids") is not None:
            positions = kwargs["position_ids"]
            end = positions[:, -1:] + torch.arange(1, grow + 1, device=device) if grow else positions[:, :0]
            ours = torch.arange(total, device=device).expand(len(rows), total)
            kwargs["position_ids"] = torch.cat([torch.cat([positions, end], 1), ours.to(positions.dtype)])
        if self._anchor is not None:
            key_index = torch.tensor([len(prompts.ids[r]) - 1 for r in self.rows], device=device)
            self._watching = True
            self._handles += self._anchor.capture_hooks(key_index, self.rows, self._captured, first_row=batch,
                                                        when=lambda: self._watching)
        return args, kwargs

    def _split(self, model, args, kwargs, outputs):
        if self._shape is None or self.replay_loss is not None:
            return None
        batch, width = self._shape
        labels = self._labels
        mask = labels != -100
        if getattr(outputs, "log_probs", None) is not None:  # TRL's fused LM head: log-probs of the labels
            token_nll = -outputs.log_probs[batch:].float()  # (rows, total - 1), zero off the answer
            counts = mask[:, 1:].sum(-1)
        elif getattr(outputs, "logits", None) is not None:  # full logits: score the answer positions only
            answer = mask[:, 1:]
            nll = F.cross_entropy(outputs.logits[batch:, :-1][answer].float(), labels[:, 1:][answer], reduction="none")
            token_nll = torch.zeros(answer.shape, device=nll.device, dtype=nll.dtype).masked_scatter(answer, nll)
            counts = answer.sum(-1)
        else:
            raise RuntimeError("The joint replay found neither log-probs nor logits in the model's outputs; use "
                               "fsft_replay_pass='separate'.")
        self.replay_loss = (token_nll.sum(-1) / counts).mean()
        self._watching = False  # until [`rearm`]: other forward calls (TRL's metrics pass) hold the batch alone
        if self._anchor is not None:
            self.keys = [self._captured[i] for i in range(len(self._anchor.modules)) if i in self._captured]
        total = kwargs["input_ids"].shape[1]
        for key, value in list(outputs.items()):
            if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == kwargs["input_ids"].shape[0]:
                value = value[:batch]
                if value.dim() >= 2 and total > width and value.shape[1] in (total, total - 1):
                    value = value[:, : value.shape[1] - (total - width)]
                outputs[key] = value
        if getattr(outputs, "log_probs", None) is not None and getattr(outputs, "loss", None) is not None:
            count = kwargs.get("num_items_in_batch")
            count = outputs.label_mask.sum().clamp(min=1) if count is None else count
            outputs["loss"] = -outputs.log_probs.sum() / count  # as the fused head computes it, on the batch alone
        return outputs
