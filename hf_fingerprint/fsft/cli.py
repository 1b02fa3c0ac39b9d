"""``hf-fingerprint fsft``: fine-tune a fingerprinted model with FSFT from the command line."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..errors import FingerprintError

__all__ = ["add_fsft_command", "run_fsft", "load_task_dataset"]

_DESCRIPTION = """\
Fine-tune a fingerprinted model on a downstream task with FSFT (fingerprint subspace-aware fine-tuning): TRL's
SFTTrainer plus a penalty that keeps the weights from drifting on the directions the fingerprint edit uses.
The fingerprint is located either by its LoRA adapter folder (--fingerprint) or by the base model it was
injected into (--base). Writes the fine-tuned model (or LoRA adapter) and fsft_summary.json to --output-dir.
"""


def add_fsft_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``fsft`` sub-command on an ``argparse`` sub-parsers object; it calls :func:`run_fsft`."""
    parser = subparsers.add_parser(
        "fsft",
        help="Fine-tune a fingerprinted model with FSFT, keeping its fingerprint edit.",
        description=_DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="The fingerprinted model to fine-tune: a local folder, a Hub id, or "
                        "'smollm2-135m-instruct'.")
    source = parser.add_argument_group("fingerprint (one of)")
    source.add_argument("--fingerprint", metavar="FOLDER", help="The fingerprint's PEFT LoRA adapter folder, or an "
                        "injection output folder that holds one.")
    source.add_argument("--base", metavar="MODEL", help="The model before fingerprinting; the edit is then every "
                        "linear weight where MODEL differs from it.")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="math", help="'math' (generated word problems), 'instruction' (Python "
                      "standard-library docs), a .json/.jsonl/.parquet file, or a folder saved with "
                      "datasets' save_to_disk. Rows need 'messages' (chat) or 'text' or 'prompt'/'completion'.")
    data.add_argument("--num-examples", type=int, default=2000, help="Examples to generate for 'math' and "
                      "'instruction'; for a file, keep at most this many rows (0 = all).")
    data.add_argument("--eval-fraction", type=float, default=0.05, help="Share of rows held out to report the "
                      "eval loss after training (0 = no evaluation).")
    data.add_argument("--max-length", type=int, default=512, help="Truncate tokenized examples to this length.")
    fsft = parser.add_argument_group("FSFT")
    fsft.add_argument("--variant", choices=["input", "two_sided", "direction", "project"], default="input",
                      help="Penalty form: ||D V||^2 ('input'), ||U^T D V||^2 ('two_sided'), <D, dW>^2 / ||dW||^2 "
                      "('direction'), or the hard constraint D V = 0 ('project'), where D is the weights' drift "
                      "from the fingerprinted ones and dW = U S V^T the edit.")
    fsft.add_argument("--lambda", dest="fsft_lambda", type=float, default=100.0, help="Weight of the penalty. "
                      "Each matrix's penalty is relative to its edit's energy and averaged over matrices: 1.0 at "
                      "a drift as large as the edit.")
    fsft.add_argument("--rank", type=int, default=None, help="Directions of each edit to protect (default: as many "
                      "as --energy requires).")
    fsft.add_argument("--energy", type=float, default=0.999, help="Share of each edit's spectral energy that the "
                      "protected directions keep, when --rank is not given.")
    fsft.add_argument("--anchor-lambda", type=float, default=0.0, help="Weight of the key anchor (0 = off): keeps "
                      "the edited layers' inputs on the fingerprint prompts as they were, which the penalty alone "
                      "cannot (upstream weights move them). Needs --fingerprints.")
    fsft.add_argument("--replay-lambda", type=float, default=0.0, help="Weight of the answer replay (0 = off): the "
                      "fingerprint pairs' own answer loss, which protects every layer on the way to the output. "
                      "Needs --fingerprints.")
    fsft.add_argument("--anchor-prompts", type=int, default=4, help="Fingerprint prompts per optimizer step for "
                      "the anchor and the replay.")
    fsft.add_argument("--anchor-every", type=int, default=1, help="The anchor and the replay act on every n-th "
                      "optimizer step only (1: every step).")
    fsft.add_argument("--replay-pass", choices=["auto", "joint", "separate"], default="auto", help="Run the replay "
                      "in the training batch ('joint': fewer kernel launches, for small GPU steps) or in a pass of "
                      "its own ('separate': padded only to the replay prompts, for CPUs and long sequences); 'auto' "
                      "joins on a GPU while the batch is at most twice as wide as the replay prompts.")
    fsft.add_argument("--fingerprints", metavar="FILE", default=None, help="The fingerprint set JSON (secret, "
                      "from 'generate'), for --anchor-lambda and --replay-lambda.")
    train = parser.add_argument_group("training")
    train.add_argument("--max-steps", type=int, default=100, help="Optimizer steps.")
    train.add_argument("--learning-rate", type=float, default=2e-5, help="Peak learning rate (AdamW, linear decay).")
    train.add_argument("--batch-size", type=int, default=8, help="Examples per device per micro-batch.")
    train.add_argument("--gradient-accumulation-steps", type=int, default=1, help="Micro-batches per optimizer "
                       "step.")
    train.add_argument("--lora-r", type=int, default=0, help="LoRA rank; 0 trains all weights (full fine-tuning).")
    train.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: 2 x --lora-r).")
    train.add_argument("--lora-target-modules", nargs="+", default=["all-linear"], help="Modules LoRA adapts; "
                       "they must include the edited ones for the penalty to act.")
    train.add_argument("--seed", type=int, default=0, help="Seed of data order and initialisation.")
    train.add_argument("--logging-steps", type=int, default=10, help="Log loss and fsft_penalty every N steps.")
    train.add_argument("--bf16", action="store_true", help="Train in bfloat16 mixed precision.")
    train.add_argument("--activation-checkpointing", action="store_true", help="Recompute activations in the "
                       "backward pass: less memory, slower steps.")
    train.add_argument("--cpu", action="store_true", help="Train on the CPU even if an accelerator is present.")
    parser.add_argument("--output-dir", required=True, help="Where the fine-tuned model and fsft_summary.json go.")
    parser.add_argument("--no-save", action="store_true", help="Do not save the fine-tuned weights (only the "
                        "summary).")
    parser.set_defaults(func=run_fsft)
    return parser


def load_task_dataset(spec: str, *, num_examples: int = 2000, seed: int = 0) -> Any:
    """A training ``datasets.Dataset`` from a built-in task name, a json/jsonl/parquet file or a saved folder."""
    import datasets

    from ..tasks import instruction_task, math_task

    if spec == "math":
        return math_task(num_examples, seed=seed)
    if spec == "instruction":
        return instruction_task(num_examples, seed=seed)
    path = Path(spec)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise FingerprintError(f"{path} holds splits {list(loaded)}; a 'train' split is needed.")
            loaded = loaded["train"]
    elif path.is_file() and path.suffix in (".json", ".jsonl"):
        loaded = datasets.Dataset.from_json(str(path))
    elif path.is_file() and path.suffix == ".parquet":
        loaded = datasets.Dataset.from_parquet(str(path))
    else:
        raise FingerprintError(
            f"Unknown dataset {spec!r}: use 'math', 'instruction', a .json/.jsonl/.parquet file or a folder saved "
            "with save_to_disk."
        )
    if num_examples and len(loaded) > num_examples:
        loaded = loaded.shuffle(seed=seed).select(range(num_examples))
    return loaded


def run_fsft(args: argparse.Namespace) -> int:
    """Run the ``fsft`` command: load, build the subspace, train, evaluate, save. Returns the exit code."""
    import torch

    from ..models import load_model
    from ..tasks import train_eval_split
    from .config import FSFTConfig
    from .subspace import FingerprintSubspace
    from .trainer import FSFTTrainer

    if bool(args.fingerprint) == bool(args.base):
        raise FingerprintError("Give exactly one of --fingerprint (adapter folder) or --base (model before "
                               "fingerprinting).")
    for flag, value in (("--anchor-lambda", args.anchor_lambda), ("--replay-lambda", args.replay_lambda)):
        if value > 0 and not args.fingerprints:
            raise FingerprintError(f"{flag} needs --fingerprints FILE (the secret fingerprint set it protects).")
    fingerprints = None
    if args.fingerprints:
        from ..fingerprints import FingerprintSet

        fingerprints = FingerprintSet.load(args.fingerprints)
    model, tokenizer = load_model(args.model)
    if args.base:
        base, _ = load_model(args.base)
        subspace = FingerprintSubspace.from_pair(base, model)
        del base
    else:
        subspace = FingerprintSubspace.build(args.fingerprint)
    data = load_task_dataset(args.dataset, num_examples=args.num_examples, seed=args.seed)
    eval_data = None
    if args.eval_fraction > 0:
        parts = train_eval_split(data, eval_fraction=args.eval_fraction, seed=args.seed)
        data, eval_data = parts["train"], parts["eval"]
    use_cpu = args.cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    config = FSFTConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, logging_steps=args.logging_steps,
        max_length=args.max_length, seed=args.seed, use_cpu=use_cpu, bf16=args.bf16, report_to="none",
        activation_checkpointing=args.activation_checkpointing,
        save_strategy="no", fsft_lambda=args.fsft_lambda, fsft_variant=args.variant, fsft_rank=args.rank,
        fsft_energy=args.energy, fsft_anchor_lambda=args.anchor_lambda, fsft_anchor_prompts=args.anchor_prompts,
        fsft_anchor_every=args.anchor_every,
        fsft_replay_lambda=args.replay_lambda, fsft_replay_pass=args.replay_pass,
    )
    peft_config = None
    if args.lora_r > 0:
        from peft import LoraConfig

        targets = args.lora_target_modules
        peft_config = LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_alpha or 2 * args.lora_r, lora_dropout=0.0,
            target_modules=targets[0] if targets == ["all-linear"] else targets, task_type="CAUSAL_LM",
        )
    trainer = FSFTTrainer(model, args=config, train_dataset=data, eval_dataset=eval_data,
                          processing_class=tokenizer, peft_config=peft_config, fingerprint_subspace=subspace,
                          fingerprints=fingerprints)
    trainer.train()
    summary: dict[str, Any] = {
        "model": args.model, "dataset": args.dataset, "variant": args.variant, "lambda": args.fsft_lambda,
        "anchor_lambda": args.anchor_lambda,
        "replay_lambda": args.replay_lambda,
        "max_steps": args.max_steps, "learning_rate": args.learning_rate, "lora_r": args.lora_r,
        "protected_modules": {name: sub.rank for name, sub in trainer.fingerprint_subspace.items()},
        "final_fsft_penalty": float(trainer.fsft_penalty("input" if args.variant == "project" else None).detach()),
        "log_history": trainer.state.log_history,
    }
    if eval_data is not None:
        summary["eval"] = trainer.evaluate()
    os.makedirs(args.output_dir, exist_ok=True)
    if not args.no_save:
        trainer.save_model(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
    Path(args.output_dir, "fsft_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"FSFT done: penalty {summary['final_fsft_penalty']:.3g}"
          + (f", eval loss {summary['eval'].get('eval_loss', float('nan')):.4f}" if eval_data is not None else "")
          + f"; wrote {args.output_dir}")
    return 0
