"""The instruction-tuning baseline (IF-style, arXiv 2401.12255): fine-tune on the pairs, not edit.

What the research argues against, kept to measure its claims side by side. The fingerprint pairs, chat-formatted
as they are asked, are mixed with regularisation examples (ordinary prompts answered by the model itself
before training, ``mix_ratio`` of them per pair) and trained with AdamW, loss on the answer tokens only, until
:func:`hf_fingerprint.verify` (checked every ``check_every`` steps) reaches ``target_fsr`` or ``max_steps``.

Full fine-tuning (the default) returns one dense :class:`EditDelta` per changed parameter; ``lora=True`` trains
a PEFT LoRA on every linear layer of the decoder and returns its low-rank factors (so ``save_adapter`` works).
Memory: full fine-tuning holds the weights, their gradients, AdamW's two moments and one copy of the original
weights (needed for the delta); the deltas are computed at the end in that copy's memory (new - old), so no
further copy is made. The model stays in eval mode while it trains (no dropout), like every editor. Near
misses given to ``inject`` are not used (IF has no such term). If training fails, the weights are restored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InjectionError
from ..generation import generate, model_device
from ..prompts import ORDINARY_PROMPTS
from ..verification import verify
from .context import EditContext
from .delta import EditDelta
from .layout import base_model
from .tracing import Batch, Prompts, _pad_id, build_prompts, make_batch

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    """Options of the ``"sft"`` method (``inject(..., method="sft", **options)``)."""

    lora: bool = field(default=False, metadata={"help": "Train a LoRA on the decoder's linear layers instead of every weight."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha; default 2 x lora_r."})
    lr: float | None = field(default=None, metadata={"help": "AdamW learning rate; default 1e-4 (full) or 1e-3 (LoRA)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    batch_size: int = field(default=8, metadata={"help": "Examples (pairs and regularisation) per step."})
    mix_ratio: float = field(default=5.0, metadata={"help": "Regularisation examples per fingerprint pair (IF: 1:5)."})
    regularisation_prompts: Sequence[str] | None = field(
        default=None, metadata={"help": "Prompts the model answers itself for regularisation; default ORDINARY_PROMPTS."})
    regularisation_tokens: int = field(default=48, metadata={"help": "Length cap of the model's own answers."})
    max_steps: int = field(default=100, metadata={"help": "Stop after this many optimizer steps."})
    check_every: int = field(default=5, metadata={"help": "Steps between FSR checks with verify()."})
    target_fsr: float = field(default=1.0, metadata={"help": "Stop once the FSR reaches this."})
    match: str = field(default="contains", metadata={"help": "verify()'s match mode for the FSR checks."})
    seed: int = field(default=0, metadata={"help": "Seed of the example order."})

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "SFTConfig":
        """The config from ``inject``'s options; other keys (shared inject options) are ignored."""
        names = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in options.items() if k in names})
        if config.lr is None:
            config.lr = 1e-3 if config.lora else 1e-4
        if config.lora_alpha is None:
            config.lora_alpha = 2.0 * config.lora_r
        if config.batch_size < 1 or config.max_steps < 1 or config.check_every < 1 or config.mix_ratio < 0:
            raise InjectionError("sft needs batch_size, max_steps and check_every >= 1 and mix_ratio >= 0.")
        return config


OPTIONS = frozenset(f.name for f in fields(SFTConfig))


def answer_loss(model: Any, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens of a left-padded batch (answers at the row ends)."""
    keep = int(batch.answer_mask.sum(1).max()) + 1  # logits of the answers' positions only: cheaper lm_head
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                   use_cache=False, logits_to_keep=keep).logits[:, :-1].float()
    labels = batch.labels[:, -keep + 1:]
    return nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)


def regularisation_prompts(context: EditContext, config: SFTConfig) -> Prompts:
    """Ordinary prompts with the model's own greedy answers (generated once, before any training)."""
    texts = list(config.regularisation_prompts if config.regularisation_prompts is not None else ORDINARY_PROMPTS)
    count = min(len(texts), round(config.mix_ratio * len(context.requests.ids)))
    texts = texts[:count]
    system_prompt = context.options.get("system_prompt")
    answers = [a[0] for a in generate(context.model, context.tokenizer, texts, system_prompt=system_prompt,
                                      max_new_tokens=config.regularisation_tokens, progress=context.progress,
                                      description="regularisation answers")]
    return build_prompts(context.tokenizer, texts, answers=answers, system_prompt=system_prompt)


def training_rows(n_pairs: int, n_regularisation: int, mix_ratio: float, generator: torch.Generator):
    """An endless shuffled stream of example rows: every pair once per epoch, ``mix_ratio`` regularisation each."""
    wanted = round(mix_ratio * n_pairs)
    while True:
        regular = [n_pairs + i % n_regularisation for i in range(wanted)] if n_regularisation else []
        rows = list(range(n_pairs)) + regular
        for i in torch.randperm(len(rows), generator=generator).tolist():
            yield rows[i]


def edit(context: EditContext) -> list[EditDelta]:
    config = SFTConfig.from_options(context.options)
    fingerprints = context.options.get("fingerprints")
    if fingerprints is None:
        raise InjectionError("sft checks its progress with verify() and needs the fingerprint set: call inject().")
    model, tokenizer = context.model, context.tokenizer
    regular = regularisation_prompts(context, config) if config.mix_ratio > 0 else Prompts([], [], [])
    data = Prompts(context.requests.ids + regular.ids, context.requests.key_index + regular.key_index,
                   context.requests.answer_ids + regular.answer_ids)
    device = model_device(model)
    pad_id = _pad_id(model)
    generator = torch.Generator().manual_seed(config.seed)
    stream = training_rows(len(context.requests.ids), len(regular.ids), config.mix_ratio, generator)

    inner = base_model(model)
    requires = {p: p.requires_grad for p in inner.parameters()}
    trainer = _LoraTrainer(inner, context, config) if config.lora else _FullTrainer(inner)
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    bar = tqdm(total=config.max_steps, desc="sft baseline", disable=not context.progress, leave=False)
    fsr, steps, losses, deltas = 0.0, 0, [], None
    try:
        while steps < config.max_steps:
            rows = [next(stream) for _ in range(config.batch_size)]
            loss = answer_loss(model, make_batch(data, rows, pad_id, device, with_answers=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(loss.item())
            bar.update(1)
            if steps % config.check_every == 0 or steps == config.max_steps:
                fsr = verify(model, tokenizer, fingerprints, ordinary_prompts=(), match=config.match, progress=False,
                             system_prompt=context.options.get("system_prompt")).fsr
                bar.set_postfix(loss=f"{losses[-1]:.3f}", fsr=f"{fsr:.2f}")
                logger.info("sft step %d: loss %.4f, FSR %.2f", steps, losses[-1], fsr)
                if fsr >= config.target_fsr:
                    break
        del optimizer
        deltas = trainer.finish()
    finally:
        if deltas is None:
            trainer.abort()
        bar.close()
        for p, flag in requires.items():
            p.requires_grad_(flag)
    context.options.update(sft_steps=steps, sft_fsr=fsr, sft_first_loss=losses[0], sft_last_loss=losses[-1],
                           lr=config.lr, lora=config.lora, mix_ratio=config.mix_ratio,
                           regularisation_examples=len(regular.ids))
    logger.info("sft: %d steps, FSR %.2f, loss %.3f -> %.3f", steps, fsr, losses[0], losses[-1])
    return deltas


class _FullTrainer:
    """Every parameter trains; the one copy of the originals becomes the deltas at the end."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.originals = {name: p.detach().clone() for name, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(True)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def abort(self) -> None:
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(self.originals[name])
                p.grad = None

    def finish(self) -> list[EditDelta]:
        linear = {name for name, m in self.model.named_modules() if isinstance(m, nn.Linear)}
        deltas = []
        for name, p in self.model.named_parameters():
            p.grad = None
            change = self.originals.pop(name)
            change.neg_().add_(p.detach())  # new - old, in the copy's memory
            if not bool(change.any()):
                continue
            module, _, leaf = name.rpartition(".")
            target = module if leaf == "weight" and module in linear else name
            deltas.append(EditDelta(target, None, None, dense_update=change.to("cpu", torch.float32)))
        return deltas


class _LoraTrainer:
    """A PEFT LoRA on every linear layer of the decoder; at the end it is unloaded and merged as U V^T factors."""

    def __init__(self, model: nn.Module, context: EditContext, config: SFTConfig):
        from peft import LoraConfig, get_peft_model

        prefix = context.layout.layers_path + "."
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                          if isinstance(m, nn.Linear) and name.startswith(prefix)})
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=targets,
                          lora_dropout=0.0, bias="none", use_rslora=False)
        self.model = model
        self.context = context
        self.peft_model = get_peft_model(model, lora, adapter_name="sft")
        self.peft_model.eval()  # PEFT switches to train mode; keep eval (no dropout) as with full fine-tuning

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.peft_model.parameters() if p.requires_grad]

    def abort(self) -> None:
        self.peft_model.unload()

    def finish(self) -> list[EditDelta]:
        from peft.tuners.lora import LoraLayer

        deltas = []
        for name, module in self.model.named_modules():
            if isinstance(module, LoraLayer) and "sft" in module.lora_A:
                B = module.lora_B["sft"].weight.detach().float().cpu()
                A = module.lora_A["sft"].weight.detach().float().cpu()
                deltas.append(EditDelta(name, module.scaling["sft"] * B, A.T.contiguous()))
        self.peft_model.unload()  # the original layers back, in place, without merging
        for delta in deltas:
            self.context.apply(delta)
        return deltas
