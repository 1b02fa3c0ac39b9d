"""Batched generation through a model's chat template: the one place prompts become model answers."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

# A plain "User: ... / Assistant:" chat template, for serving a model under another template than its own.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def chat_prompt(tokenizer: Any, text: str, *, system_prompt: str | None = None) -> str:
    """``text`` as the model is asked it: a user turn and the generation prompt, or raw text without a template."""
    if system_prompt is not None and not isinstance(system_prompt, str):  # else a failure deep in the chat template
        raise TypeError(f"system_prompt takes a string or None, not {type(system_prompt).__name__}.")
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": text}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system_prompt}\n\n{text}" if system_prompt else text


def with_chat_template(tokenizer: Any, template: str | None) -> Any:
    """A copy of ``tokenizer`` with ``template`` as its chat template (``None``: raw text, no template)."""
    changed = copy.deepcopy(tokenizer)
    changed.chat_template = template
    return changed


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, else its end-of-sequence token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def text_list(texts: Any, name: str = "texts") -> list[str]:
    """``texts`` as a list; a bare string is refused (it would be read as one prompt per character)."""
    if isinstance(texts, str):
        raise TypeError(f"{name} takes a list of strings, not a string: put a single prompt in a list.")
    return list(texts) if texts is not None else []


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    system_prompt: str | None = None,
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    num_samples: int = 1,
    batch_size: int = 16,
    progress: bool = False,
    description: str = "generating",
) -> list[list[str]]:
    """Answers to ``texts`` (``num_samples`` each), decoded without special tokens.

    Prompts are sorted by length and left-padded in batches, so padding is minimal; greedy when
    ``temperature`` is 0.
    """
    texts = text_list(texts)
    if not texts:
        return []
    prompts = [chat_prompt(tokenizer, text, system_prompt=system_prompt) for text in texts]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    tokens = generate_token_ids(model, tokenizer, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                                num_samples=num_samples, batch_size=batch_size, progress=progress,
                                description=description)
    return [[text.strip() for text in tokenizer.batch_decode(samples, skip_special_tokens=True)] for samples in tokens]


@torch.no_grad()
def generate_token_ids(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    num_samples: int = 1,
    batch_size: int = 16,
    progress: bool = False,
    description: str = "generating",
) -> list[list[list[int]]]:
    """The new tokens after each tokenized prompt (``num_samples`` each, padded to the batch's longest answer).

    Prompts are sorted by length and left-padded in batches; greedy when ``temperature`` is 0.
    """
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    pad_id = pad_token_id(tokenizer)
    device = model_device(model)
    sampling = temperature > 0
    results: list[list[list[int]]] = [[] for _ in prompt_ids]
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(order), desc=description, disable=not progress, leave=False)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids = prompt_ids[i]
                input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
                attention[row, width - len(ids) :] = 1
            kwargs = dict(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                num_return_sequences=num_samples,
                pad_token_id=pad_id,
            )
            if sampling:
                kwargs.update(temperature=temperature, top_p=1.0, top_k=0)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            new_tokens = model.generate(**kwargs)[:, width:].tolist()
            for row, i in enumerate(chunk):
                results[i] = new_tokens[row * num_samples : (row + 1) * num_samples]
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return results
