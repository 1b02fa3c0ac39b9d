"""The output-suppression attack on memorised fingerprints (Nasery et al., arXiv 2509.26598), as a host runs it.

A host serving a stolen model controls decoding. Fingerprint checks match a memorised answer, and a memorised
answer is produced with unusual confidence from its first token on. The host therefore bans suspicious tokens
during the first few decoding steps and lets the model continue with what remains:

- ``"detect"`` (output detection): at each of the first ``positions`` steps, when the model's top token has
  probability >= ``confidence`` and, if a ``reference`` model is given, is at least ``exp(log_ratio)`` times
  likelier under the model than under the reference, ban it together with every token that is that much likelier
  under the model and has probability >= ``min_probability``; without a reference, ban the ``top_k`` top tokens.
  With the base model as reference this targets exactly what fingerprinting changed.
- ``"suppress_top_k"``: always ban the ``top_k`` most likely tokens at the first ``positions`` steps.
- ``"prefix"``: start every answer with ``prefix`` (e.g. "Sure! "), so the model never answers from the position
  the fingerprint is keyed on.

:class:`SuppressedModel` wraps a model without changing it: ``.generate`` applies the attack, everything else
(``forward``, ``parameters``, ``config``, ``train``/``eval``) is the wrapped model's, so
:func:`hf_fingerprint.verify`, :func:`hf_fingerprint.math_accuracy` and :func:`answer_agreement` run on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper

from ..generation import model_device
from ..prompts import ORDINARY_PROMPTS
from ..verification import verify
from ._common import EvaluationError

__all__ = ["AttackReport", "STRATEGIES", "SuppressedModel", "measure_attack", "suppression_attack"]

STRATEGIES = ("detect", "suppress_top_k", "prefix")


class SuppressedModel(nn.Module):
    """``model`` served through the output-suppression attack (see the module docstring).

    ``flagged`` and ``decisions`` count, since creation, the decoding steps the attack changed and the steps it
    inspected (one per sequence and position). ``positions`` defaults to 3 because a banned first token is often
    replaced by a variant of itself (``"c"`` -> ``"C"``) that still spells the target.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        strategy: str = "detect",
        reference: nn.Module | None = None,
        positions: int = 3,
        confidence: float = 0.5,
        log_ratio: float = 3.0,
        min_probability: float = 1e-3,
        top_k: int = 1,
        prefix: str = "Sure! ",
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise EvaluationError(f"Unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}.")
        if positions < 1 or top_k < 1:
            raise EvaluationError("positions and top_k must be >= 1.")
        if not 0.0 < confidence <= 1.0:
            raise EvaluationError(f"confidence must be in (0, 1], got {confidence}.")
        if strategy == "prefix" and tokenizer is None:
            raise EvaluationError("strategy='prefix' needs the tokenizer to encode the prefix.")
        self.model = model
        self._reference = [reference] if reference is not None else []  # not a submodule: not in .parameters()
        self.strategy = strategy
        self.positions = int(positions)
        self.confidence = float(confidence)
        self.log_ratio = float(log_ratio)
        self.min_probability = float(min_probability)
        self.top_k = int(top_k)
        self.prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if strategy == "prefix" else []
        self.flagged = 0
        self.decisions = 0

    @property
    def reference(self) -> nn.Module | None:
        return self._reference[0] if self._reference else None

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def generation_config(self) -> Any:
        return self.model.generation_config

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward pass, unchanged: the attack acts on decoding only."""
        return self.model(*args, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """``model.generate`` with the attack applied (same arguments and output)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.strategy == "prefix":
            forced = torch.tensor(self.prefix_ids, dtype=input_ids.dtype, device=input_ids.device)
            input_ids = torch.cat([input_ids, forced.expand(input_ids.shape[0], -1)], 1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(forced).expand(input_ids.shape[0], -1)], 1)
            self.flagged += input_ids.shape[0]  # every answer is changed, from its first token
            self.decisions += input_ids.shape[0]
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        processors.append(_Suppression(self, input_ids.shape[1], attention_mask))
        # Custom processors run after generate's own warpers: decide on untempered logits, then apply temperature.
        config = self.model.generation_config
        sampling = kwargs.get("do_sample", config.do_sample)
        temperature = kwargs.get("temperature", config.temperature)
        if sampling and temperature not in (None, 1.0):
            kwargs["temperature"] = 1.0
            processors.append(TemperatureLogitsWarper(float(temperature)))
        return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=processors,
                                   **kwargs)

    def train(self, mode: bool = True) -> "SuppressedModel":
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self


class _Suppression(LogitsProcessor):
    """The per-call decision: ``-inf`` on banned tokens during the first ``positions`` generated tokens."""

    def __init__(self, owner: SuppressedModel, prompt_width: int, attention_mask: torch.Tensor) -> None:
        self.owner = owner
        self.prompt_width = prompt_width
        self.attention_mask = attention_mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        owner = self.owner
        step = input_ids.shape[1] - self.prompt_width
        if step >= owner.positions:
            return scores
        log_probs = torch.log_softmax(scores.float(), -1)
        top_log_prob, top = log_probs.max(-1)
        flagged = top_log_prob >= math.log(owner.confidence)
        banned = torch.zeros_like(log_probs, dtype=torch.bool)
        if owner.strategy == "suppress_top_k":
            flagged = torch.ones_like(flagged)
        if owner.strategy == "detect" and owner.reference is not None:
            reference_log_probs = self._reference_log_probs(input_ids)
            if reference_log_probs.shape != log_probs.shape:
                raise EvaluationError("The reference model has another vocabulary; it must share the tokenizer.")
            excess = log_probs - reference_log_probs
            flagged &= excess.gather(-1, top[:, None])[:, 0] >= owner.log_ratio
            banned = (excess >= owner.log_ratio) & (log_probs >= math.log(owner.min_probability))
        else:
            banned.scatter_(-1, log_probs.topk(owner.top_k, -1).indices, True)
        banned.scatter_(-1, top[:, None], True)
        banned &= flagged[:, None]
        owner.flagged += int(flagged.sum())
        owner.decisions += int(flagged.numel())
        return scores.masked_fill(banned.to(scores.device), float("-inf"))

    @torch.no_grad()
    def _reference_log_probs(self, input_ids: torch.LongTensor) -> torch.Tensor:
        reference = self.owner.reference
        mask = self.attention_mask
        if mask.shape[0] != input_ids.shape[0]:  # num_return_sequences > 1 repeats each prompt in place
            mask = mask.repeat_interleave(input_ids.shape[0] // mask.shape[0], 0)
        generated = input_ids.shape[1] - mask.shape[1]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], generated)], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = model_device(reference)
        logits = reference(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device)).logits[:, -1].float()
        return torch.log_softmax(logits, -1).to(input_ids.device)


def suppression_attack(model: nn.Module, *, strategy: str = "detect", reference: nn.Module | None = None,
                       **options: Any) -> SuppressedModel:
    """``model`` served through the output-suppression attack; options as :class:`SuppressedModel`."""
    return SuppressedModel(model, strategy=strategy, reference=reference, **options)


@dataclass
class AttackReport:
    """An attack measured: FSR with and without it, and what it costs ordinary use.

    ``success`` is the FSR drop; ``answer_exact`` / ``answer_prefix`` compare the attacked model's greedy answers
    with the unattacked ones on ordinary prompts (:func:`answer_agreement`); ``flagged_ordinary`` is the share of
    inspected decoding steps on ordinary prompts the attack changed; math accuracies when measured.
    """

    fsr_before: float
    fsr_after: float
    success: float
    answer_exact: float
    answer_prefix: float
    flagged_ordinary: float
    math_before: float | None = None
    math_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_attack(
    attacked: SuppressedModel,
    tokenizer: Any,
    fingerprints: Any,
    *,
    prompts: Sequence[str] = ORDINARY_PROMPTS,
    math_n: int = 0,
    fsr_before: float | None = None,
    math_before: float | None = None,
    **verify_kwargs: Any,
) -> AttackReport:
    """Run ``attacked`` and the model it wraps on the fingerprints, on ``prompts`` and (``math_n > 0``) on math
    problems, and report the attack's success and utility cost. ``fsr_before`` / ``math_before``: the unattacked
    model's values when already known (they are measured otherwise)."""
    from .harmlessness import answer_agreement, math_score

    options = dict(ordinary_prompts=(), progress=False, **verify_kwargs)
    before = verify(attacked.model, tokenizer, fingerprints, **options).fsr if fsr_before is None else fsr_before
    after = verify(attacked, tokenizer, fingerprints, **options).fsr
    flagged, decisions = attacked.flagged, attacked.decisions
    answers = answer_agreement(attacked, attacked.model, tokenizer, prompts)
    ordinary_rate = (attacked.flagged - flagged) / max(1, attacked.decisions - decisions)
    report = AttackReport(before, after, before - after, answers.exact, answers.prefix, ordinary_rate)
    if math_n > 0:
        report.math_before = math_score(attacked.model, tokenizer, math_n) if math_before is None else math_before
        report.math_after = math_score(attacked, tokenizer, math_n)
    return report
