"""The everyday costs on the embedded SmolLM2-135M-Instruct: first load, cached load, fingerprint generation,
verification of an unmodified model, and the default injection with statistics cached.

    python benchmarks/basics.py                  # writes benchmarks/results/basics.md
    python benchmarks/basics.py --skip-inject    # without the injection (about 2 minutes on 2 cores)

The first load converts the GGUF file into a fresh temporary cache (as a new user's first call does); the
injection then uses the usual cache (``$HF_FINGERPRINT_CACHE`` or ``~/.cache/hf_fingerprint``), so its key
statistics are computed once, untimed, if they are not there yet.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

from injection import RESULTS, machine


def timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-inject", action="store_true")
    parser.add_argument("--name", default="basics")
    args = parser.parse_args()

    import hf_fingerprint as hfp

    rows: list[tuple[str, str]] = []
    usual_cache = os.environ.get("HF_FINGERPRINT_CACHE")
    with tempfile.TemporaryDirectory() as fresh:
        os.environ["HF_FINGERPRINT_CACHE"] = fresh
        _, first = timed(lambda: hfp.load_model("smollm2-135m-instruct"))
        (model, tokenizer), cached = timed(lambda: hfp.load_model("smollm2-135m-instruct"))
    if usual_cache is None:
        os.environ.pop("HF_FINGERPRINT_CACHE")
    else:
        os.environ["HF_FINGERPRINT_CACHE"] = usual_cache
    rows += [("first load (GGUF converted to safetensors)", f"{first:.1f} s"), ("cached load", f"{cached:.2f} s")]

    def many():
        fps = hfp.FingerprintSet.generate(1000, seed=0)
        return fps, fps.near_misses(3)

    (_, near), seconds = timed(many)
    rows.append((f"generate 1,000 fingerprints + {len(near):,} near misses", f"{seconds:.2f} s"))

    fresh_set = hfp.FingerprintSet.generate(10, seed=1)
    report, seconds = timed(lambda: hfp.verify(model, tokenizer, fresh_set, progress=False))
    rows.append((f"verify 10 fresh fingerprints on the unmodified model ({report.queries} queries, greedy)",
                 f"{seconds:.1f} s: FSR {report.matched}/{report.total}, p-value {report.p_value:.3g}"))

    if not args.skip_inject:
        fps = hfp.FingerprintSet.generate(10, seed=0)
        from hf_fingerprint.editing.covariance import layer_statistics
        from hf_fingerprint.editing.layout import find_layout

        layout = find_layout(model)
        layer_statistics(model, tokenizer, layout, layout.default_layers(), progress=False)  # computed once if absent
        target, _ = hfp.load_model("smollm2-135m-instruct")
        result = hfp.inject(target, tokenizer, fps, progress=False)
        keys = result.options.get("trigger_keys")
        rows.append(("default injection, 10 fingerprints (seed 0), statistics cached",
                     f"{result.seconds:.1f} s, peak {result.peak_memory_bytes / 2**30:.2f} GiB, FSR {result.fsr:.0%}"
                     f" ({keys} keyed at the trigger, {10 - keys} at the last prompt token)"))

    table = "\n".join(["| what | measured |", "|---|---|", *[f"| {what} | {value} |" for what, value in rows]])
    text = (f"# Everyday costs on SmolLM2-135M-Instruct\n\n{datetime.date.today()}, {machine()}, one run. "
            f"Reproduce: `python benchmarks/basics.py {' '.join(sys.argv[1:])}`\n\n{table}\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
