"""Injection benchmark on the embedded SmolLM2-135M-Instruct: every editor and the instruction-tuning baseline.

Each (method, size) runs in its own process, so wall time and peak memory (process peak RSS on CPU, peak
allocated on CUDA) are its own. Prints a markdown table and writes it to benchmarks/results/injection.md.

    python benchmarks/injection.py                       # all methods, 10 and 100 fingerprints
    python benchmarks/injection.py --methods alphaedit memit --sizes 10
    python benchmarks/injection.py --methods alphaedit alphaedit:near_misses=auto sft --sizes 10
    python benchmarks/injection.py --methods alphaedit alphaedit:near_misses=auto --sizes 10 --styles scrambled natural
    python benchmarks/injection.py --methods alphaedit --sizes 100 --candidates 1 8

A method may carry options as ``METHOD:KEY=VALUE,...`` (JSON values, else strings), so one method can appear
twice with different options. ``sft``, unless given ``target_fsr``, trains until it reaches the FSR of the first
editor of the same size in the run (the comparison at equal FSR). ``--styles`` runs every method on fingerprint
sets of each trigger style (``FingerprintSet.generate(style=...)``), ``--candidates K ...`` on sets whose triggers
the model chose among K each (``scoring_model=``; 1: no choice; the choosing time is its own column). Every
method's options are checked before the first run, so a misspelt one stops the benchmark at once instead of
failing its row.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def write_results(name: str, lines: list[str], data) -> None:
    """Write a benchmark's markdown table (``lines``) and its raw ``data`` as results/<name>.md and .json, and
    print the table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    print("\n".join(lines))


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def run_one(method: str, size: int, seed: int, options: dict, style: str = "scrambled", candidates: int = 1) -> dict:
    """Inject into a fresh copy of the model and measure everything (runs in a child process)."""
    import torch

    import hf_fingerprint as hfp
    from hf_fingerprint.evaluation.harmlessness import agreement, perplexity

    base, tokenizer = hfp.load_model("smollm2-135m-instruct")
    model, _ = hfp.load_model("smollm2-135m-instruct")
    started = time.perf_counter()
    scoring = (base, tokenizer) if candidates > 1 else None
    fps = hfp.FingerprintSet.generate(size, seed=seed, style=style, scoring_model=scoring, candidates=candidates)
    generation_seconds = time.perf_counter() - started
    near = fps.near_misses(2, seed=99)  # other near misses than the ones the editor preserves
    base_report = hfp.verify(base, tokenizer, fps, near_misses=near, ordinary_prompts=(), progress=False)
    base_ppl = perplexity(base, tokenizer)
    result = hfp.inject(model, tokenizer, fps, method=method, verify_after=False, progress=False, **options)
    report = hfp.verify(model, tokenizer, fps, near_misses=near, progress=False)
    ppl = perplexity(model, tokenizer)
    agree = agreement(model, base, tokenizer)
    return {
        "method": method,
        "n": size,
        "style": style,
        "candidates": candidates,
        "options": options,
        "generation_seconds": generation_seconds,
        "seconds": result.seconds,
        "peak_memory_gb": result.peak_memory_bytes / 1e9,
        "fsr": report.fsr,
        "base_fsr": base_report.fsr,
        "near_miss_false_triggers": report.near_miss_false_trigger_rate,
        "ordinary_false_triggers": report.ordinary_false_trigger_rate,
        "perplexity_change": ppl / base_ppl - 1,
        "token_agreement": agree.token_agreement,
        "kl": agree.mean_kl,
        "p_value": report.p_value,
        "torch_threads": torch.get_num_threads(),
        "trigger_keys": result.options.get("trigger_keys"),
    }


def parse_value(text: str):
    """A command-line option value: JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(text: str) -> dict:
    """``KEY=VALUE,KEY=VALUE`` (values as :func:`parse_value`; a comma inside brackets belongs to the value, as in
    ``layers=[6,7,8]``)."""
    pairs = re.split(r",(?![^\[]*\])", text)
    return {key: parse_value(value) for key, _, value in (pair.partition("=") for pair in filter(None, pairs))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["alphaedit", "memit", "rome", "rledit", "sft"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--styles", nargs="+", default=["scrambled"], help="trigger styles to run every method on")
    parser.add_argument("--candidates", nargs="+", type=int, default=[1],
                        help="triggers drawn per kept one, chosen by the model (1: none)")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="an option for one method, e.g. alphaedit:near_misses=null")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(RESULTS / "injection.md"))
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(run_one(**spec)), flush=True)
        return

    options: dict[str, dict] = {}
    for item in args.option:
        method, pair = item.split(":", 1)
        key, value = pair.split("=", 1)
        options.setdefault(method, {})[key] = json.loads(value)
    from hf_fingerprint.editing.inject import check_options
    from hf_fingerprint.fingerprints import STYLES

    runs = []
    for token in args.methods:
        method, _, inline = token.partition(":")
        runs.append((method, {**options.get(method, {}), **parse_options(inline)}))
        try:
            check_options(method, runs[-1][1])
        except Exception as error:
            parser.error(f"{token}: {error}")
    for style in args.styles:
        if style not in STYLES:
            parser.error(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    if any(k < 1 for k in args.candidates):
        parser.error("--candidates must be positive")
    rows = []
    for size, style, k, (method, run_options) in itertools.product(args.sizes, args.styles, args.candidates, runs):
        spec = {"method": method, "size": size, "seed": args.seed, "style": style, "candidates": k,
                "options": dict(run_options)}
        edits = [r for r in rows if r["n"] == size and r.get("style", "scrambled") == style
                 and r.get("candidates", 1) == k and r["method"] != "sft" and "error" not in r]
        if method == "sft" and "target_fsr" not in spec["options"] and edits:
            spec["options"]["target_fsr"] = edits[0]["fsr"]
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{method} n={size} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            rows.append({"method": method, "n": size, "style": style, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        row = json.loads(lines[-1][len("RESULT "):])
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_table(rows, args.output)
    print(write_table(rows, args.output))


def write_table(rows: list[dict], output: str) -> str:
    """The markdown table of the rows so far (rewritten after every row, so an interrupted run keeps them)."""
    header = (
        f"Injection on SmolLM2-135M-Instruct, {datetime.date.today()}, {machine()}; one run each, "
        f"`python benchmarks/injection.py {' '.join(sys.argv[1:])}`. Near-miss false triggers: 2 near misses per "
        "trigger (character edits, re-shuffles, drops, swaps, truncations; seed 99), other than those an editor preserves. Token agreement and KL are measured on the built-in ordinary prompts, which `sft` also trains on (the base model's own answers, as regularisation), so its agreement is a training-set figure.\n\n"
        "| method | options | n | time (s) | choosing triggers (s) | peak memory (GB) | FSR | trigger keys | base FSR | near-miss false triggers | "
        "ordinary false triggers | perplexity change | token agreement | KL |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for r in rows:
        if "error" in r:
            body += f"| {r['method']} | | {r['n']} | failed: {' '.join(r['error'])[:80]} |||||||||||\n"
            continue
        keys = r.get("trigger_keys")
        body += (
            f"| {r['method']} | {describe(r['options'], r.get('style', 'scrambled'), r.get('candidates', 1))} | {r['n']} | "
            f"{r['seconds']:.1f} | {r.get('generation_seconds', 0):.1f} | {r['peak_memory_gb']:.2f} | "
            f"{100 * r['fsr']:.0f} % | {'-' if keys is None else keys} | "
            f"{100 * r['base_fsr']:.0f} % | {100 * r['near_miss_false_triggers']:.1f} % | "
            f"{100 * r['ordinary_false_triggers']:.1f} % | {100 * r['perplexity_change']:+.2f} % | "
            f"{100 * r['token_agreement']:.1f} % | {r['kl']:.4f} |\n"
        )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(header + body)
    return header + body


def describe(options: dict, style: str = "scrambled", candidates: int = 1) -> str:
    """The options column: the non-default trigger style and choice, then the method's options."""
    parts = ([f"{style} triggers"] if style != "scrambled" else []) + [f"{k}={v}" for k, v in options.items()]
    parts = ([f"triggers chosen among {candidates}"] if candidates > 1 else []) + parts
    return ", ".join(parts) or "defaults"


if __name__ == "__main__":
    main()
