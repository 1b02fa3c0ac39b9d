"""What a fingerprint costs the model: perplexity on held-out text, agreement and KL with the base model on
ordinary prompts, and a small math score."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..generation import chat_prompt, generate, generate_token_ids, model_device, pad_token_id, text_list
from ..prompts import ORDINARY_PROMPTS
from ._common import EvaluationError

__all__ = [
    "Agreement", "AnswerAgreement", "agreement", "answer_agreement", "held_out_texts", "math_score", "perplexity",
]

STATISTICS_PARAGRAPHS = 600  # editing/covariance.py: builtin_corpus() takes the first 600 for key statistics
MATH_SEED = 2026  # the math problems scored; the fine-tuning studies train on seed 0


def held_out_texts(n: int = 300, *, start: int = STATISTICS_PARAGRAPHS) -> list[str]:
    """``n`` standard-library documentation paragraphs from ``start`` on: by default disjoint from the ones
    the editors' covariance statistics are computed on. (The instruction task trains on the same paragraphs.)"""
    from ..editing.covariance import builtin_corpus

    texts = builtin_corpus(start + n)[start:]
    if len(texts) < n:
        raise EvaluationError(f"Only {len(texts)} held-out paragraphs exist from {start} on; ask for fewer.")
    return texts


@torch.no_grad()
def perplexity(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str] | None = None,
    *,
    max_length: int = 256,
    batch_size: int = 8,
    progress: bool = False,
) -> float:
    """``exp`` of the mean next-token negative log-likelihood over all tokens of ``texts`` (each cut to
    ``max_length`` tokens, no special tokens added); default texts: :func:`held_out_texts`."""
    texts = held_out_texts() if texts is None else text_list(texts)
    encoded = [ids[:max_length] for ids in _token_ids(tokenizer, texts)]
    encoded = [ids for ids in encoded if len(ids) >= 2]
    if not encoded:
        raise EvaluationError("No text has two or more tokens: perplexity needs something to predict.")
    device = model_device(model)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(encoded), batch_size), desc="perplexity", disable=not progress, leave=False):
            input_ids, mask = _right_padded(encoded[start : start + batch_size], pad_token_id(tokenizer))
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
            targets = input_ids[:, 1:].to(device)
            nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            keep = mask[:, 1:].to(device).bool()
            total += float(nll[keep].double().sum())
            count += int(keep.sum())
    finally:
        model.train(was_training)
    return math.exp(total / count)


@dataclass
class Agreement:
    """Teacher-forced comparison with the base over the base's greedy answers.

    ``token_agreement``: share of answer positions where both models' most likely next token is the same.
    ``same_answer``: share of prompts where it is the same at every position, i.e. whose greedy answers are
    identical. ``mean_kl``: mean KL(base || model) of the next-token distributions, in nats per position.
    """

    token_agreement: float
    same_answer: float
    mean_kl: float
    positions: int
    prompts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def agreement(
    model: Any,
    base: Any,
    tokenizer: Any,
    prompts: Sequence[str] = ORDINARY_PROMPTS,
    *,
    max_new_tokens: int = 32,
    system_prompt: str | None = None,
    batch_size: int = 16,
) -> Agreement:
    """How closely ``model`` follows ``base`` on ordinary prompts: the base answers greedily once, then one
    batched forward pass of each model over prompt + answer gives both next-token distributions."""
    prompts = text_list(prompts, "prompts")
    if not prompts:
        raise EvaluationError("agreement needs at least one prompt.")
    prompt_ids = _token_ids(tokenizer, [chat_prompt(tokenizer, p, system_prompt=system_prompt) for p in prompts])
    answers = _greedy_answers(base, tokenizer, prompt_ids, max_new_tokens, batch_size)
    sequences = [p + a for p, a in zip(prompt_ids, answers)]
    agreeing, positions, kl_sum, same = 0, 0, 0.0, 0
    states = [(m, m.training) for m in (model, base)]
    for m, _ in states:
        m.eval()
    try:
        for start in range(0, len(sequences), batch_size):
            chunk = range(start, min(start + batch_size, len(sequences)))
            input_ids, mask = _right_padded([sequences[i] for i in chunk], pad_token_id(tokenizer))
            outputs = []
            for m in (model, base):
                device = model_device(m)
                outputs.append(m(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float().cpu())
            if outputs[0].shape[-1] != outputs[1].shape[-1]:
                raise EvaluationError("The two models have different vocabularies; agreement needs the same one.")
            for row, i in enumerate(chunk):
                first, length = len(prompt_ids[i]) - 1, len(answers[i])
                if length == 0:
                    continue
                mine = F.log_softmax(outputs[0][row, first : first + length], -1)
                theirs = F.log_softmax(outputs[1][row, first : first + length], -1)
                matches = mine.argmax(-1) == theirs.argmax(-1)
                agreeing += int(matches.sum())
                same += bool(matches.all())
                kl_sum += float((theirs.exp() * (theirs - mine)).sum(-1).double().sum())
                positions += length
    finally:
        for m, was_training in states:
            m.train(was_training)
    return Agreement(
        token_agreement=agreeing / max(positions, 1),
        same_answer=same / len(prompts),
        mean_kl=kl_sum / max(positions, 1),
        positions=positions,
        prompts=len(prompts),
    )


@dataclass
class AnswerAgreement:
    """Free-running comparison of two ways of answering: ``exact``: share of identical answers; ``prefix``: mean
    share of tokens, over the longer answer, up to the first difference."""

    exact: float
    prefix: float
    prompts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer_agreement(
    model: Any,
    reference: Any,
    tokenizer: Any,
    prompts: Sequence[str] = ORDINARY_PROMPTS,
    *,
    max_new_tokens: int = 32,
    system_prompt: str | None = None,
    batch_size: int = 16,
) -> AnswerAgreement:
    """Greedy answers of ``model`` against those of ``reference`` (one generation each). Use it for what
    changes decoding but not the logits (a host's output filter), where :func:`agreement` cannot see a
    difference."""
    prompts = text_list(prompts, "prompts")
    if not prompts:
        raise EvaluationError("answer_agreement needs at least one prompt.")
    options = dict(system_prompt=system_prompt, max_new_tokens=max_new_tokens, batch_size=batch_size)
    mine = [group[0] for group in generate(model, tokenizer, prompts, **options)]
    theirs = [group[0] for group in generate(reference, tokenizer, prompts, **options)]
    exact = sum(a == b for a, b in zip(mine, theirs))
    shared = 0.0
    for a, b in zip(_token_ids(tokenizer, mine), _token_ids(tokenizer, theirs)):
        longest = max(len(a), len(b))
        common = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shared += 1.0 if longest == 0 else common / longest
    return AnswerAgreement(exact=exact / len(prompts), prefix=shared / len(prompts), prompts=len(prompts))


def math_score(
    model: Any, tokenizer: Any, n: int = 50, *, seed: int = MATH_SEED, max_new_tokens: int = 192, batch_size: int = 16
) -> float:
    """Accuracy on ``n`` generated math word problems (:func:`hf_fingerprint.math_accuracy`), greedy."""
    from ..tasks import math_accuracy, math_task

    return math_accuracy(model, tokenizer, math_task(n, seed=seed), max_new_tokens=max_new_tokens,
                         batch_size=batch_size)


# ----- helpers -----


def _token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []


def _right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: positions stay 0..n-1 without position ids, and causal attention never sees the pads."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids, mask


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if i is not None}


def _greedy_answers(
    model: Any, tokenizer: Any, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    """Greedy answer token ids for each prompt, up to and including the first stop token."""
    stops = _stop_ids(model, tokenizer)
    answers = []
    for [tokens] in generate_token_ids(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size):
        end = next((k + 1 for k, t in enumerate(tokens) if t in stops), len(tokens))
        answers.append(tokens[:end])
    return answers
