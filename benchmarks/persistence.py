"""Persistence study: do fingerprints survive someone else's fine-tuning? (SmolLM2-135M-Instruct, offline tasks)

Each injection variant is applied once to a fresh copy of the embedded model; each fine-tuning setting then
trains a copy of the injected model with TRL's plain SFTTrainer (or FSFT) and records the FSR every
``--eval-every`` steps. Results go to benchmarks/results/<name>.{md,json,png}; the JSON is rewritten after every
run, so an interrupted study keeps what it measured.

    python benchmarks/persistence.py                                   # default injection vs the sft reference
    python benchmarks/persistence.py --variant redundant=alphaedit:key_position=last+trigger \\
        --finetune full:2e-5 --finetune lora:2e-4 --steps 200 --eval-every 25
    python benchmarks/persistence.py --finetune full:2e-5 --finetune full:2e-5:fsft=100   # SFT vs FSFT
    python benchmarks/persistence.py --report benchmarks/results/persistence.json      # table + plot again
    python benchmarks/persistence.py --report A.json B.json       # append B's runs to A (same settings), redraw

Variants: ``NAME=METHOD[:KEY=VALUE,...]`` (values are JSON, else strings), e.g. ``sft=sft:max_steps=60``.
Fine-tuning settings: ``full:LR`` or ``lora:LR`` with optional ``:fsft=LAMBDA`` (and ``:variant=project`` etc.,
the FSFT penalty's form; ``:anchor=LAMBDA`` adds the key anchor,
``:replay=LAMBDA`` the answer replay, ``:prompts=N`` their fingerprint prompts per step, default 4; 2 before 2026-11-28; ``:every=N`` on every
N-th step only),
``:accum=N`` (micro-batches of ``--batch-size`` per optimizer step), ``:task=instruction``,
``:steps=N`` (instead of ``--steps``) and ``:only=NAME`` (one variant only). ``--accuracy N`` also scores each math
run's greedy answers on N held-out problems (the task metric besides the held-out loss).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

from injection import RESULTS, machine, parse_options


def parse_variant(text: str) -> dict:
    name, _, spec = text.partition("=")
    if not spec:
        name, spec = text, text
    method, _, rest = spec.partition(":")
    return {"name": name, "method": method, "options": parse_options(rest)}


def parse_finetune(text: str) -> dict:
    mode, lr, *extra = text.split(":")
    if mode not in ("full", "lora"):
        raise SystemExit(f"--finetune {text}: the mode is 'full' or 'lora'")
    spec = {"label": text, "lora": mode == "lora", "lr": float(lr), "fsft": None, "variant": "input", "anchor": None, "replay": None,
            "prompts": None, "every": None, "accum": None, "task": "math",
            "steps": None, "only": None}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--finetune {text}: {item!r} is not KEY=VALUE")
        if key not in spec:
            raise SystemExit(f"--finetune {text}: unknown key {key!r} (fsft, variant, anchor, replay, prompts, every, accum, task, steps, only)")
        try:
            spec[key] = float(value) if key in ("fsft", "anchor", "replay") else int(value) if key in ("steps", "prompts", "every", "accum") else value
        except ValueError:
            raise SystemExit(f"--finetune {text}: {key}={value!r} is not a number") from None
    spec["label"] = ":".join(part for part in text.split(":") if not part.startswith("only="))
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=None, metavar="NAME=METHOD[:K=V,...]")
    parser.add_argument("--finetune", action="append", default=None, metavar="full|lora:LR[:fsft=L][:variant=V][:task=T]")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("-n", "--fingerprints", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-at-zero", action="store_true",
                        help="end a fine-tuning run once its FSR is 0 (the table marks where it stopped)")
    parser.add_argument("--bf16", action="store_true", help="fine-tune under bfloat16 autocast (faster on CPUs with AMX)")
    parser.add_argument("--accuracy", type=int, default=0, metavar="N",
                        help="also score greedy answers on N held-out math problems after each math run (0 = off)")
    parser.add_argument("--name", default="persistence", help="results file stem under benchmarks/results/")
    args = parser.parse_args()
    if args.accuracy < 0:
        parser.error(f"--accuracy is a number of problems (0 = off), got {args.accuracy}")
    variants = [parse_variant(v) for v in (args.variant or ["alphaedit", "sft"])]
    from hf_fingerprint.editing.inject import check_options
    from hf_fingerprint.errors import InjectionError

    try:  # before the first (long) run, not when its variant comes up
        for variant in variants:
            check_options(variant["method"], variant["options"])
    except InjectionError as error:
        parser.error(str(error))
    finetunes = [parse_finetune(f) for f in (args.finetune or ["full:2e-5", "lora:2e-4"])]

    import torch

    import hf_fingerprint as hfp
    from hf_fingerprint.evaluation import finetune
    from hf_fingerprint.evaluation.harmlessness import perplexity

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / args.name
    fps = hfp.FingerprintSet.generate(args.fingerprints, seed=args.seed)
    base, tokenizer = hfp.load_model("smollm2-135m-instruct")
    base_ppl = perplexity(base, tokenizer)
    runs: list[dict] = []
    command = "python benchmarks/persistence.py " + " ".join(sys.argv[1:])
    meta = {"date": str(datetime.date.today()), "machine": machine(), "command": command,
            "fingerprints": args.fingerprints, "seed": args.seed, "batch_size": args.batch_size,
            "precision": "bf16 autocast" if args.bf16 else "float32"}

    def fsr(model) -> float:
        return hfp.verify(model, tokenizer, fps, ordinary_prompts=(), progress=False).fsr

    from hf_fingerprint.fsft.cli import load_task_dataset

    held_out = {task: load_task_dataset(task, num_examples=64, seed=args.seed + 1000)
                for task in {spec["task"] for spec in finetunes}}
    problems = load_task_dataset("math", num_examples=args.accuracy, seed=args.seed + 1000) if args.accuracy else None

    def accuracy(model, task: str) -> float | None:
        """Greedy-answer accuracy on ``--accuracy`` held-out math problems (None when off or not the math task)."""
        if problems is None or task != "math":
            return None
        from hf_fingerprint.tasks import math_accuracy

        return math_accuracy(model, tokenizer, problems)

    @torch.no_grad()
    def task_loss(model, task: str) -> float:
        """Mean token loss on 64 held-out examples of the task (the task metric of a fine-tuning run)."""
        model.eval()
        total, count = 0.0, 0
        rows = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in held_out[task]]
        for start in range(0, len(rows), 8):
            batch = tokenizer(rows[start:start + 8], return_tensors="pt", padding=True, add_special_tokens=False,
                              padding_side="right")
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            out = model(**batch, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            total, count = total + float(out.loss) * n, count + n
        return total / count

    for variant in variants:
        model, _ = hfp.load_model("smollm2-135m-instruct")
        started = time.perf_counter()
        result = hfp.inject(model, tokenizer, fps, method=variant["method"], verify_after=False, progress=False,
                            **variant["options"])
        inject_s = time.perf_counter() - started
        ppl_change = perplexity(model, tokenizer) / base_ppl - 1
        print(f"[{variant['name']}] injected in {inject_s:.0f} s, perplexity {100 * ppl_change:+.2f} %", flush=True)
        for spec in finetunes:
            if spec["only"] not in (None, variant["name"]):
                continue
            steps = spec["steps"] or args.steps
            curve: list[tuple[int, float]] = []
            eval_seconds = [0.0]

            def record(step, model, curve=curve, spec=spec, eval_seconds=eval_seconds):
                began = time.perf_counter()
                curve.append((step, fsr(model)))
                eval_seconds[0] += time.perf_counter() - began
                print(f"[{variant['name']} | {spec['label']}] step {step}: FSR {curve[-1][1]:.2f}", flush=True)
                return args.stop_at_zero and step > 0 and curve[-1][1] == 0.0

            anchor = {}
            for key in ("anchor", "replay"):
                if spec[key] is not None:
                    anchor.update({"fsft_fingerprints": fps, f"fsft_{key}_lambda": spec[key]})
                    if spec["fsft"] is None:
                        raise SystemExit(f"--finetune {spec['label']}: {key}= is part of FSFT; give fsft= too (0 for "
                                         f"{key} only)")
            if spec["prompts"] is not None:
                anchor["fsft_anchor_prompts"] = spec["prompts"]
            if spec["every"] is not None:
                anchor["fsft_anchor_every"] = spec["every"]
            if spec["accum"] is not None:
                anchor["gradient_accumulation_steps"] = spec["accum"]
            started = time.perf_counter()
            tuned = finetune(model, tokenizer, spec["task"], steps=steps, lr=spec["lr"], lora=spec["lora"],
                     batch_size=args.batch_size, fsft_subspace=result if spec["fsft"] is not None else None,
                     fsft_lambda=spec["fsft"] or 0.0, fsft_variant=spec["variant"], eval_every=args.eval_every,
                     on_eval=record, seed=args.seed, bf16=args.bf16, **anchor)
            train_seconds = time.perf_counter() - started - eval_seconds[0]
            runs.append({**variant, "finetune": spec["label"], "inject_seconds": inject_s,
                         "trigger_keys": result.options.get("trigger_keys"),
                         "perplexity_change": ppl_change, "curve": curve, "stopped_early": curve[-1][0] < steps,
                         "seconds_per_step": train_seconds / max(1, curve[-1][0]),
                         "task_loss": task_loss(tuned, spec["task"]), "accuracy": accuracy(tuned, spec["task"]),
                         "accuracy_problems": args.accuracy or None})
            del tuned
            stem.with_suffix(".json").write_text(json.dumps({**meta, "runs": runs}, indent=1))
        del model, result
    write_report(stem, meta, runs)


def report_from_json(path: str, *more: str) -> None:
    """Rewrite the table and plot of a finished (or interrupted) study from its JSON; runs of ``more`` studies
    (same settings, other variants) are appended to it, their commands listed."""
    data = json.loads(Path(path).read_text())
    for other in more:
        extra = json.loads(Path(other).read_text())
        data["runs"] += extra["runs"]
        data["command"] += f"` and `{extra['command']}"
    Path(path).write_text(json.dumps(data, indent=1))
    runs = data.pop("runs")
    write_report(Path(path).with_suffix(""), data, runs)


def write_report(stem: Path, meta: dict, runs: list[dict]) -> None:
    steps = sorted({s for r in runs for s, _ in r["curve"]})
    scored = any(r.get("accuracy") is not None for r in runs)
    lines = [
        f"Persistence on SmolLM2-135M-Instruct, {meta['date']}, {meta['machine']}; {meta['fingerprints']} fingerprints, "
        f"batch {meta['batch_size']}, {meta['precision']}, one run each. `{meta['command']}`\n",
        "| injection | options | perplexity change | fine-tuning | " + " | ".join(f"FSR @{s}" for s in steps)
        + " | held-out task loss |" + (" math accuracy |" if scored else "") + " s/step |",
        "|---|---|---|---|" + "---|" * len(steps) + "---|" * (3 if scored else 2),
    ]
    for r in runs:
        at = dict(r["curve"])
        last = max(at)
        cells = " | ".join(f"{100 * at[s]:.0f} %" if s in at else ("stopped" if s > last and r.get("stopped_early") else "") for s in steps)
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        loss = f"{r['task_loss']:.4f}" if r.get("task_loss") is not None else "not measured"
        if r.get("seconds_per_step"):
            per_step = f"{r['seconds_per_step']:.1f}"
        elif r.get("finetune_seconds"):  # older result files: wall time including the FSR checks
            per_step = f"{r['finetune_seconds'] / max(1, r['curve'][-1][0]):.1f} (with checks)"
        else:
            per_step = "not measured"
        if scored:
            loss += (f" | {100 * r['accuracy']:.1f} % of {r['accuracy_problems']}" if r.get("accuracy") is not None
                     else " | not measured")
        lines.append(f"| {r['name']} ({r['method']}) | {options} | {100 * r['perplexity_change']:+.2f} % | "
                     f"{r['finetune']} | {cells} | {loss} | {per_step} |")
    if meta.get("note"):  # written by hand into the JSON: what the commands alone do not say
        lines += ["", meta["note"]]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        xs, ys = zip(*r["curve"])
        ax.plot(xs, [100 * y for y in ys], marker="o", label=f"{r['name']} | {r['finetune']}")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("FSR (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(f"Fingerprint persistence, SmolLM2-135M\n{meta['machine']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if len(sys.argv) >= 3 and sys.argv[1] == "--report":
        report_from_json(*sys.argv[2:])
    else:
        main()
