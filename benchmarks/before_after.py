"""Injection time before and after a code change, side by side in one run.

The ``--before`` revision is exported with ``git archive`` into a temporary folder; each timed injection runs in its
own process on the embedded SmolLM2-135M-Instruct with ``PYTHONPATH`` pointing at one tree (before, then after,
alternating, ``--repeats`` times), so both see the same machine load. Covariance statistics must be cached
(any earlier injection computes them). Prints a table and writes benchmarks/results/<name>.md.

    python benchmarks/before_after.py --before HEAD~1                    # the last commit against the working tree
    python benchmarks/before_after.py --before 153cd33 --after d1b7187 --repeats 3 -n 10 --threads 2
    python benchmarks/before_after.py --before 153cd33 --option value_noise=0.1   # inject options (JSON values)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
import hf_fingerprint as hfp
model, tokenizer = hfp.load_model("smollm2-135m-instruct")
fps = hfp.FingerprintSet.generate(int(sys.argv[2]), seed=0)
result = hfp.inject(model, tokenizer, fps, progress=False, **json.loads(sys.argv[3]))
print("RESULT " + json.dumps(dict(seconds=result.seconds, fsr=result.fsr, code=hfp.__file__)))
"""


def export(revision: str, folder: Path) -> Path:
    """The package of ``revision``, extracted into ``folder``."""
    proc = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision, "hf_fingerprint"],
                          capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"cannot export revision '{revision}' (is it a commit of this repository?): "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    archive = proc.stdout
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def time_once(tree: Path, threads: int, n: int, options: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(n), json.dumps(options)], env=env, cwd=tree,
                         capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"injection with {tree} failed:\n{out.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    if Path(result["code"]).resolve().parent.parent != tree.resolve():
        raise SystemExit(f"the child imported {result['code']}, not the tree {tree}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--after", default=None, help="git revision (default: the working tree)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("-n", "--fingerprints", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="inject option")
    parser.add_argument("--name", default="before_after")
    args = parser.parse_args()
    if args.repeats < 1 or args.fingerprints < 1 or args.threads < 1:
        parser.error("--repeats, --fingerprints and --threads must be at least 1")
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    sys.path.insert(0, str(Path(__file__).parent))
    from injection import machine

    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": export(args.before, Path(tmp) / "before"),
                 "after": export(args.after, Path(tmp) / "after") if args.after else ROOT}
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for repeat in range(args.repeats):
            for label in ("before", "after"):
                runs[label].append(time_once(trees[label], args.threads, args.fingerprints, options))
                print(f"[{label} {repeat + 1}/{args.repeats}] {runs[label][-1]['seconds']:.1f} s, "
                      f"FSR {runs[label][-1]['fsr']:.0%}", flush=True)
    median = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    command = "python benchmarks/" + " ".join([Path(__file__).name, *sys.argv[1:]])
    lines = [
        f"Injection time before and after, {datetime.date.today()}, {machine().rsplit(', torch', 1)[0]}, "
        f"torch threads {args.threads}, {args.fingerprints} fingerprints (seed 0), statistics cached, options "
        f"{options or 'default'}; runs alternate, each in its own process. `{command}`",
        "",
        "| code | seconds per run | median | FSR | ratio to before |",
        "|---|---|---|---|---|",
    ]
    for label, revision in (("before", args.before), ("after", args.after or "working tree")):
        seconds = " / ".join(f"{r['seconds']:.1f}" for r in runs[label])
        fsr = " / ".join(f"{r['fsr']:.0%}" for r in runs[label])
        lines.append(f"| {label} ({revision}) | {seconds} | {median[label]:.1f} s | {fsr} | "
                     f"{median[label] / median['before']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)


if __name__ == "__main__":
    main()
