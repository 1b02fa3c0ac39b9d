"""Downstream fine-tuning as a model's next owner would run it: TRL's SFTTrainer (or FSFT), full or LoRA."""

from __future__ import annotations

import copy
import shutil
import tempfile
from typing import Any, Callable

import torch

from ._common import EvaluationError, working_copy

__all__ = ["finetune"]


def finetune(
    model: Any,
    tokenizer: Any,
    dataset: Any = "math",
    *,
    steps: int,
    lr: float,
    batch_size: int = 8,
    lora: bool = False,
    lora_r: int = 16,
    lora_alpha: float | None = None,
    fsft_subspace: Any = None,
    fsft_lambda: float = 100.0,
    fsft_variant: str = "input",
    fsft_fingerprints: Any = None,
    eval_every: int | None = None,
    on_eval: Callable[[int, Any], Any] | None = None,
    num_examples: int = 2000,
    max_length: int = 512,
    seed: int = 0,
    inplace: bool = False,
    progress: bool = False,
    **config_overrides: Any,
) -> Any:
    """Fine-tune ``model`` for ``steps`` optimizer steps and return it as a plain model (LoRA merged in).

    ``dataset``: a ``datasets.Dataset`` in a format SFTTrainer takes (``messages`` rows), or ``"math"`` /
    ``"instruction"`` for ``num_examples`` rows of the built-in tasks. ``lora``: train a rank-``lora_r``
    adapter on all linear layers (alpha ``2 * lora_r`` by default), merged into the weights at the end.
    ``fsft_subspace``: anything :class:`hf_fingerprint.FSFTTrainer` takes as ``fingerprint_subspace`` (e.g. the
    :class:`~hf_fingerprint.InjectionResult`); it switches from plain SFT to FSFT with ``fsft_lambda`` and
    ``fsft_variant``; ``fsft_fingerprints`` goes to the trainer as ``fingerprints`` (the key anchor and the answer
    replay, with ``fsft_anchor_lambda=...`` / ``fsft_replay_lambda=...`` among ``config_overrides``). ``on_eval(step, model)`` is called before the first step and every ``eval_every`` steps
    (e.g. to record the FSR curve); returning ``True`` from it stops training there. AdamW at a constant ``lr``, float32, on the GPU when there is one;
    ``config_overrides`` go to the ``SFTConfig``/``FSFTConfig``. Returns a copy unless ``inplace``.
    """
    if steps < 1:
        raise EvaluationError(f"steps must be >= 1, got {steps}.")
    if (eval_every is None) != (on_eval is None):
        raise EvaluationError("Pass eval_every and on_eval together (or neither).")
    if eval_every is not None and eval_every < 1:
        raise EvaluationError(f"eval_every must be >= 1, got {eval_every}.")
    from transformers import TrainerCallback

    from ..fsft.cli import load_task_dataset

    if isinstance(dataset, str):
        dataset = load_task_dataset(dataset, num_examples=num_examples, seed=seed)
    result = working_copy(model, inplace)
    output_dir = tempfile.mkdtemp(prefix="hf-fingerprint-finetune-")
    settings = dict(
        output_dir=output_dir, max_steps=int(steps), learning_rate=float(lr), per_device_train_batch_size=batch_size,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=max(1, steps // 10), save_strategy="no",
        report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False, seed=seed, max_length=max_length,
        disable_tqdm=not progress, dataloader_num_workers=0, activation_checkpointing=False,
    )
    settings.update(config_overrides)
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")

    class _EvalCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if on_eval(0, model) is True:
                control.should_training_stop = True

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % eval_every == 0 and on_eval(state.global_step, model) is True:
                control.should_training_stop = True

    callbacks = [_EvalCallback()] if on_eval is not None else None
    common = dict(args=None, train_dataset=dataset, processing_class=copy.deepcopy(tokenizer),
                  peft_config=peft_config, callbacks=callbacks)
    try:
        if fsft_subspace is None:
            from trl import SFTConfig, SFTTrainer

            trainer = SFTTrainer(result, **{**common, "args": SFTConfig(**settings)})
        else:
            from ..fsft import FSFTConfig, FSFTTrainer

            config = FSFTConfig(**settings, fsft_lambda=fsft_lambda, fsft_variant=fsft_variant)
            trainer = FSFTTrainer(result, **{**common, "args": config}, fingerprint_subspace=fsft_subspace,
                                  fingerprints=fsft_fingerprints)
        trainer.train()
        trained = trainer.model.merge_and_unload() if lora else trainer.model
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    trained.eval()
    return trained
