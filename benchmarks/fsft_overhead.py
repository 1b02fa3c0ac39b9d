"""FSFT overhead: seconds per optimizer step of TRL's SFTTrainer vs FSFTTrainer, side by side in one process.

SmolLM2-135M-Instruct on the offline math task, batch 8. The fingerprint is a rank-10 edit of the default layers'
down_proj (the shape a 10-fingerprint injection has; the cost depends only on shapes and rank, so the edit is
random rather than injected). Each configuration runs in a fresh process (trainers that ran earlier in the
same process slowed later ones down), ``--repeats`` times, in forward then reverse order so that a drift of the
machine's speed hits all alike; each step is timed by a callback and the median and mean step after ``--warmup``
steps are reported, with their ratios to plain SFT. The mean is the one to read for settings whose steps differ
by design (``fsft_anchor_every`` > 1: time a multiple of n steps, e.g. ``--steps 8 --warmup 2`` for n = 2 or 3).

    python benchmarks/fsft_overhead.py    # SFT, FSFT input, FSFT project, FSFT input + anchor (+ replay)
    python benchmarks/fsft_overhead.py --steps 20 --repeats 3 --bf16
    python benchmarks/fsft_overhead.py --interleaved --steps 14 --bf16 --configs "FSFT persisting"

``--interleaved`` runs all trainers in one process instead, one optimizer step each per round in a fresh random
order, and adds the paired ratio (per round, over the SFTTrainer step of the same round): this shared CPU's speed
drifts by up to 1.5x between processes, and the pairing cancels a drift slower than a round.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time

from injection import machine, write_results

CONFIGS = {
    "SFTTrainer": None,
    "FSFT input": dict(fsft_variant="input", fsft_lambda=100.0),
    "FSFT project": dict(fsft_variant="project"),
    "FSFT input + anchor": dict(fsft_variant="input", fsft_lambda=100.0, fsft_anchor_lambda=100.0),
    "FSFT input + anchor + replay": dict(fsft_variant="input", fsft_lambda=100.0, fsft_anchor_lambda=100.0,
                                         fsft_replay_lambda=1.0, fsft_anchor_prompts=2),
    "FSFT input + anchor + replay, 1 prompt": dict(fsft_variant="input", fsft_lambda=100.0, fsft_anchor_lambda=100.0,
                                                   fsft_replay_lambda=1.0, fsft_anchor_prompts=1),
    "FSFT input + anchor + replay, 4 prompts": dict(fsft_variant="input", fsft_lambda=100.0, fsft_anchor_lambda=100.0,
                                                    fsft_replay_lambda=1.0, fsft_anchor_prompts=4),
    # the README's persisting setting (replay in its own pass on a CPU, as fsft_replay_pass="auto" chooses there)
    "FSFT persisting": dict(fsft_lambda=100.0, fsft_anchor_lambda=100.0, fsft_replay_lambda=0.2),
    # the answer replay alone (no penalty, no key anchor): the ablation of 2026-11-29
    "FSFT replay only": dict(fsft_lambda=0.0, fsft_replay_lambda=0.2),
    "FSFT persisting, joint pass": dict(fsft_lambda=100.0, fsft_anchor_lambda=100.0, fsft_replay_lambda=0.2,
                                        fsft_replay_pass="joint"),
    "FSFT persisting, every 2nd step": dict(fsft_lambda=100.0, fsft_anchor_lambda=100.0, fsft_replay_lambda=0.2,
                                            fsft_anchor_every=2),
    "FSFT persisting, every 3rd step": dict(fsft_lambda=100.0, fsft_anchor_lambda=100.0, fsft_replay_lambda=0.2,
                                            fsft_anchor_every=3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG",
                        help=f"which of {list(CONFIGS)} to time (SFTTrainer is always included)")
    parser.add_argument("--interleaved", action="store_true",
                        help="all trainers in this process, one optimizer step each per round, in a fresh random "
                             "order (benchmarks/interleaved.py); --repeats ignored; reports the paired ratio too")
    parser.add_argument("--name", default="fsft_overhead")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("TIMES " + json.dumps(time_steps(args.child, args)), flush=True)
        return
    chosen = [name for name in CONFIGS if name == "SFTTrainer" or name in args.configs]
    if args.interleaved:
        return interleaved(chosen, args)
    steps: dict[str, list[float]] = {name: [] for name in chosen}
    for repeat in range(args.repeats):
        for name in chosen if repeat % 2 == 0 else chosen[::-1]:
            command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size), "--accumulation", str(args.accumulation)]
            command += ["--bf16"] if args.bf16 else []
            proc = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("TIMES ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            times = json.loads(lines[-1][len("TIMES "):])[args.warmup:]
            steps[name] += times
            print(f"[{repeat}] {name}: median {statistics.median(times):.3f}, mean {statistics.mean(times):.3f} "
                  f"s/step", flush=True)
    base, base_mean = statistics.median(steps["SFTTrainer"]), statistics.mean(steps["SFTTrainer"])
    rows = [{"config": name, "median_s": statistics.median(t), "ratio": statistics.median(t) / base,
             "mean_s": statistics.mean(t), "mean_ratio": statistics.mean(t) / base_mean, "steps": len(t)}
            for name, t in steps.items()]
    lines = [
        f"FSFT overhead on SmolLM2-135M-Instruct, {datetime.date.today()}, {machine()}; math task, batch "
        f"{args.batch_size} x {args.accumulation} accumulation, {'bf16 autocast' if args.bf16 else 'float32'}, median and mean of {args.repeats} x "
        f"{args.steps - args.warmup} timed steps per configuration, each run in its own process, order alternating. "
        f"`python benchmarks/fsft_overhead.py {' '.join(sys.argv[1:])}`\n",
        "| trainer | s/step (median) | ratio to SFTTrainer | s/step (mean) | ratio to SFTTrainer |",
        "|---|---|---|---|---|",
    ] + [f"| {r['config']} | {r['median_s']:.3f} | {r['ratio']:.3f}x | {r['mean_s']:.3f} | {r['mean_ratio']:.3f}x |"
         for r in rows]
    write_results(args.name, lines, {"machine": machine(), "rows": rows})


def interleaved(chosen: list[str], args: argparse.Namespace) -> None:
    """The trainers interleaved step by step in this process; the paired ratio cancels the host's drift."""
    from interleaved import interleaved_step_times, summarise

    model, tokenizer, deltas, fps, data, settings = setup(args)
    times = interleaved_step_times(model, tokenizer, {name: CONFIGS[name] for name in chosen}, settings=settings,
                                   data=data, deltas=deltas, fingerprints=fps)
    for name, t in times.items():
        print(f"{name}: {[round(x, 3) for x in t]}", flush=True)
    rows = summarise(times, args.warmup)
    lines = [
        f"FSFT overhead on SmolLM2-135M-Instruct, {datetime.date.today()}, {machine()}; math task, batch "
        f"{args.batch_size} x {args.accumulation} accumulation, {'bf16 autocast' if args.bf16 else 'float32'}; the "
        f"trainers interleaved step by step on one model (one optimizer each; each round in a random order), "
        f"{args.steps - args.warmup} timed steps each after {args.warmup} untimed. Paired ratio: the median over "
        f"rounds of the step's time over the SFTTrainer step of the same round. "
        f"`python benchmarks/fsft_overhead.py {' '.join(sys.argv[1:])}`\n",
        "| trainer | s/step (median) | ratio to SFTTrainer | s/step (mean) | ratio to SFTTrainer | paired ratio |",
        "|---|---|---|---|---|---|",
    ] + [f"| {r['config']} | {r['median_s']:.3f} | {r['ratio']:.3f}x | {r['mean_s']:.3f} | {r['mean_ratio']:.3f}x "
         f"| {r['paired_ratio']:.3f}x |" for r in rows]
    write_results(args.name, lines, {"machine": machine(), "interleaved": True, "rows": rows})


def setup(args: argparse.Namespace):
    """SmolLM2, a random rank-10 edit of the default layers, 10 fingerprints, the math task and the trainer settings."""
    import torch

    import hf_fingerprint as hfp
    from hf_fingerprint.editing.delta import EditDelta
    from hf_fingerprint.editing.layout import find_layout

    model, tokenizer = hfp.load_model("smollm2-135m-instruct")
    layout = find_layout(model)
    generator = torch.Generator().manual_seed(0)
    deltas = []
    for layer in layout.default_layers():
        weight = model.get_submodule(layout.module_name(layer, "down_proj")).weight
        deltas.append(EditDelta(layout.module_name(layer, "down_proj"),
                                torch.randn(weight.shape[0], 10, generator=generator) * 1e-3,
                                torch.randn(weight.shape[1], 10, generator=generator)))
    fps = hfp.FingerprintSet.generate(10, seed=0)
    data = hfp.math_task(args.batch_size * args.accumulation * (args.steps + 1), seed=0)
    settings = dict(output_dir="/tmp/hf-fingerprint-overhead", max_steps=args.steps, learning_rate=1e-5,
                    per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.accumulation,
                    lr_scheduler_type="constant", logging_steps=10**6,
                    save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), bf16=args.bf16,
                    seed=0, max_length=512, disable_tqdm=True, dataloader_num_workers=0,
                    activation_checkpointing=False)
    return model, tokenizer, deltas, fps, data, settings


def time_steps(name: str, args: argparse.Namespace) -> list[float]:
    """Seconds of each optimizer step of one configuration (runs in a child process)."""
    from transformers import TrainerCallback

    from interleaved import make_trainer

    model, tokenizer, deltas, fps, data, settings = setup(args)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *_, **__):
            self.began = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.began)

    timer = StepTimer()
    make_trainer(model, tokenizer, CONFIGS[name], settings=settings, data=data, deltas=deltas, fingerprints=fps,
                 callbacks=[timer]).train()
    return timer.times


if __name__ == "__main__":
    main()
