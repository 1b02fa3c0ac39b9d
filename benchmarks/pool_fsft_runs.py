"""Pool the FSFT step timings of several ``paper_shapes.py`` runs (their json files) into one table.

One run of a dozen interleaved rounds is noisy on a GPU (a step of a 3B model at batch 8 takes 0.17-0.47 s from
round to round); pooling the rounds of runs with the same settings gives a steadier ratio. Each row: every
timed step of every run, its median over SFTTrainer's, its mean over SFTTrainer's, and the median over all
rounds of the step's time over the SFTTrainer step of the same round (the paired ratio).

    python benchmarks/pool_fsft_runs.py benchmarks/results/paper_shapes_h200_shuffled_run{1,2,3}.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def pool(paths: list[Path]) -> tuple[str, list[str], dict[str, list[float]], dict[str, list[float]]]:
    """The runs' setting (machine, shape, batch), and per trainer: all timed steps and all per-round ratios to
    SFTTrainer's step."""
    order: list[str] = []
    times: dict[str, list[float]] = {}
    paired: dict[str, list[float]] = {}
    settings = set()
    for path in paths:
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"{path}: not a readable paper_shapes.py json file ({error})") from None
        fsft = run.get("fsft") if isinstance(run, dict) else None
        if not fsft or not any(row.get("config") == "SFTTrainer" for row in fsft.get("rows", [])):
            raise SystemExit(f"{path}: no FSFT timings with an SFTTrainer row (was it run with --fsft-shape none?)")
        settings.add((run["machine"], run["torch"], fsft["shape"], fsft["accumulation"]))
        rows = {row["config"]: row["times"] for row in fsft["rows"]}
        base = rows["SFTTrainer"]
        for name, steps in rows.items():
            if name not in order:
                order.append(name)
            times.setdefault(name, []).extend(steps)
            paired.setdefault(name, []).extend(t / b for t, b in zip(steps, base))
    if len(settings) > 1:
        raise SystemExit(f"these runs timed different settings (machine, torch, shape, accumulation): "
                         f"{sorted(settings)}")
    machine, torch_version, shape, accumulation = settings.pop()
    return (f"{machine}, torch {torch_version}, {shape}, full fine-tuning, batch 8 x {accumulation}", order, times,
            paired)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="paper_shapes.py json files with an FSFT part")
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    setting, order, times, paired = pool(args.runs)
    base = times["SFTTrainer"]
    lines = [f"FSFT step time, {setting}; pooled over {len(args.runs)} runs: {', '.join(p.name for p in args.runs)}",
             "",
             "| trainer | steps | s/step (median) | ratio of medians | ratio of means | paired ratio (median) |",
             "|---|---|---|---|---|---|"]
    for name in order:
        t = times[name]
        lines.append(f"| {name} | {len(t)} | {statistics.median(t):.3f} | "
                     f"{statistics.median(t) / statistics.median(base):.3f}x | "
                     f"{statistics.mean(t) / statistics.mean(base):.3f}x | {statistics.median(paired[name]):.3f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
