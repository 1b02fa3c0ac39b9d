"""Robustness table: the default injection on SmolLM2-135M-Instruct, evaluated along every dimension in one run.

Injects fresh fingerprints with ``hf_fingerprint.inject`` (any method and options), then runs
``hf_fingerprint.evaluate`` against the unmodified model: effectiveness, harmlessness, robustness (int8, 4-bit,
pruning, deployment settings), false triggers (the near-miss study), the suppression attacks and efficiency.
Writes benchmarks/results/<name>.md and .json; every figure in them comes from this one run.

    python benchmarks/robustness.py
    python benchmarks/robustness.py --method memit --option near_misses=auto --name robustness_memit
"""

from __future__ import annotations

import argparse
import datetime
import sys

from injection import RESULTS, machine, parse_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="alphaedit")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="an inject() option (JSON value)")
    parser.add_argument("-n", "--fingerprints", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--math-n", type=int, default=50, help="math problems for the utility score (0 skips it)")
    parser.add_argument("--persistence", action="store_true", help="add the short fine-tuning runs (minutes each)")
    parser.add_argument("--name", default="robustness")
    args = parser.parse_args()
    options = {key: parse_value(value) for key, _, value in (pair.partition("=") for pair in args.option)}

    import hf_fingerprint as hfp
    from hf_fingerprint.evaluation import DEFAULT_DIMENSIONS, evaluate

    base, tokenizer = hfp.load_model("smollm2-135m-instruct")
    model, _ = hfp.load_model("smollm2-135m-instruct")
    fps = hfp.FingerprintSet.generate(args.fingerprints, seed=args.seed)
    result = hfp.inject(model, tokenizer, fps, method=args.method, verify_after=False, **options)
    dimensions = DEFAULT_DIMENSIONS + (("persistence",) if args.persistence else ())
    report = evaluate(model, tokenizer, fps, base=base, injection=result, dimensions=dimensions, math_n=args.math_n)
    header = (
        f"# Robustness of `{args.method}` fingerprints on SmolLM2-135M-Instruct\n\n"
        f"{datetime.date.today()}, {machine()}; {args.fingerprints} fingerprints (seed {args.seed}), options "
        f"{options or 'default'}, one run. Reproduce: `python benchmarks/robustness.py {' '.join(sys.argv[1:])}`\n\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(header + report.to_markdown() + "\n")
    (RESULTS / f"{args.name}.json").write_text(report.to_json())
    print(header + report.to_markdown())


if __name__ == "__main__":
    main()
