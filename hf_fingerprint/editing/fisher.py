"""Output sensitivity: how much ordinary text's predictions depend on each direction of one layer's output.

An edit writes its target value's change (z - h) into the residual stream wherever an ordinary token's key
resembles a trigger's; the harm that does is, to second order, a quadratic form in the change: the Fisher
information of the next-token distribution with respect to that layer's output. Penalising target values in
that metric (option ``value_fisher_weight``) steers them to the directions ordinary text is least sensitive to.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..generation import model_device
from .covariance import corpus_texts
from .layout import ModelLayout, get_module


def output_fisher(
    model: Any,
    tokenizer: Any,
    layout: ModelLayout,
    layer: int,
    *,
    corpus: Any = None,
    max_tokens: int = 20_000,
    max_length: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """F = E_t[g_t g_t^T] over the corpus tokens (d_model x d_model, float32, CPU).

    g_t is the gradient, with respect to the output of ``layer`` at token t, of the negative log-likelihood of
    next tokens sampled from the model itself at every position (so E[g g^T] is the Gauss-Newton matrix of the
    NLL: the curvature that turns a change of the output into lost log-likelihood). The corpus and caps are
    those of the covariance statistics (:func:`~hf_fingerprint.editing.covariance.layer_statistics`); sums
    accumulate in float64, and the labels come from a generator seeded with ``seed``.
    """
    texts = corpus_texts(tokenizer, corpus)
    device = model_device(model)
    module = get_module(model, layout.layer_name(layer))
    size = layout.hidden_size
    total = torch.zeros(size, size, dtype=torch.float64, device=device)
    generator = torch.Generator(device).manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        leaf = hidden.detach().requires_grad_(True)  # the backward pass stops here
        state["hidden"] = leaf
        return (leaf,) + tuple(output[1:]) if isinstance(output, tuple) else leaf

    requires = {p: p.requires_grad for p in model.parameters()}
    was_training, side = model.training, tokenizer.padding_side
    counted = 0
    bar = tqdm(total=max_tokens, desc=f"output sensitivity (layer {layer})", disable=not progress, leave=False,
               unit="tok")
    handle = module.register_forward_hook(hook)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        tokenizer.padding_side = "right"
        for start in range(0, len(texts), batch_size):
            if counted >= max_tokens:
                break
            enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length, add_special_tokens=False).to(device)
            mask = enc["attention_mask"].bool()
            with torch.enable_grad():
                logits = model(**enc, use_cache=False).logits.float()
                with torch.no_grad():
                    sampled = torch.multinomial(torch.softmax(logits[mask], -1), 1, generator=generator)[:, 0]
                nll = torch.nn.functional.cross_entropy(logits[mask], sampled, reduction="sum")
                nll.backward()
            grads = state.pop("hidden").grad[mask].double()
            total.addmm_(grads.T, grads)
            counted += int(mask.sum())
            bar.update(int(mask.sum()))
    finally:
        handle.remove()
        bar.close()
        tokenizer.padding_side = side
        model.train(was_training)
        for p, flag in requires.items():
            p.requires_grad_(flag)
    return (total / max(1, counted)).float().cpu()
