"""Robustness table: injections on SmolLM2-135M-Instruct, each evaluated along every dimension, in one run.

For each ``--method`` (``METHOD[:KEY=VALUE,...]``, repeatable; default: the default injection) a fresh copy of
the embedded model gets the same fingerprints with ``hf_fingerprint.inject``, then ``hf_fingerprint.evaluate``
runs against the unmodified model: effectiveness, harmlessness, robustness (int8, 4-bit, pruning, deployment
settings), false triggers (the near-miss study), the suppression attacks and efficiency. With several methods a
side-by-side table of the five dimensions comes first. Writes benchmarks/results/<name>.md and .json; every
figure in them comes from this one run.

    python benchmarks/robustness.py --math-n 0
    python benchmarks/robustness.py --math-n 0 --texts 100 --name robustness_methods --method alphaedit \\
        --method alphaedit:near_misses=auto --method memit --method rome --method rledit --method sft
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from injection import RESULTS, machine, parse_options, parse_value


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _signed(value) -> str:
    return "-" if value is None else f"{100 * value:+.1f} %"


def comparison(reports: dict) -> str:
    """The five dimensions side by side, one row per injection (what each column means: the sections below)."""
    head = ("| injection | FSR | perplexity change | token agreement / KL | int8 | 4-bit g32 / g64 | pruning 10 / 30 % "
            "| merge linear / TIES / DARE | system prompt | near misses (>= 20 %) | suppression (base ref.) "
            "| injection time |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, r in reports.items():
        e, h, rob, f = r["effectiveness"], r["harmlessness"] or {}, r["robustness"] or {}, r["false_triggers"] or {}
        attack = (r["attacks"] or {}).get("detect, base as reference") or {}
        rows.append(
            f"| {label} | {_pct(e['fsr'])} | {_signed(h.get('perplexity_change'))} "
            f"| {_pct(h.get('token_agreement'))} / {h.get('mean_kl', float('nan')):.3f} "
            f"| {_pct(rob.get('int8 (per channel)'))} "
            f"| {_pct(rob.get('4-bit RTN (group 32)'))} / {_pct(rob.get('4-bit RTN (group 64)'))} "
            f"| {_pct(rob.get('magnitude pruning 10 %'))} / {_pct(rob.get('magnitude pruning 30 %'))} "
            f"| {_pct(rob.get('linear merge (0.5)'))} / {_pct(rob.get('TIES merge (density 0.2)'))} / "
            f"{_pct(rob.get('DARE merge (density 0.5)'))} "
            f"| {_pct(rob.get('system prompt (generic)'))} "
            f"| {_pct(f.get('near_miss_rate'))} ({_pct(f.get('near_miss_rate_at_20pct'))}) "
            f"| {_pct(attack.get('fsr_before'))} -> {_pct(attack.get('fsr_after'))} "
            f"| {r['efficiency']['seconds']:.0f} s |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", action="append", default=None, metavar="METHOD[:K=V,...]",
                        help="an injection to evaluate (repeatable; default: alphaedit with default options)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an inject() option for every method (JSON value)")
    parser.add_argument("-n", "--fingerprints", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--math-n", type=int, default=50, help="math problems for the utility score (0 skips it)")
    parser.add_argument("--texts", type=int, default=300, help="held-out paragraphs for every perplexity")
    parser.add_argument("--merge-steps", type=int, default=20, help="steps of the other fine-tune of the base that "
                        "every injection is merged with (full fine-tuning on the instruction task, lr 1e-4; 0: no merges)")
    parser.add_argument("--persistence", action="store_true", help="add the short fine-tuning runs (minutes each)")
    parser.add_argument("--name", default="robustness")
    args = parser.parse_args()
    shared = {key: parse_value(value) for key, _, value in (pair.partition("=") for pair in args.option)}
    injections = []
    for spec in args.method or ["alphaedit"]:
        method, _, text = spec.partition(":")
        injections.append((spec, method, {**shared, **parse_options(text)}))

    import hf_fingerprint as hfp
    from hf_fingerprint.evaluation import DEFAULT_DIMENSIONS, evaluate
    from hf_fingerprint.evaluation.harmlessness import held_out_texts

    base, tokenizer = hfp.load_model("smollm2-135m-instruct")
    fps = hfp.FingerprintSet.generate(args.fingerprints, seed=args.seed)
    texts = held_out_texts(args.texts)
    dimensions = DEFAULT_DIMENSIONS + (("persistence",) if args.persistence else ())
    other = None
    if args.merge_steps > 0:  # someone else's fine-tune of the same base, for the merges
        from hf_fingerprint.evaluation import finetune

        other = finetune(base, tokenizer, "instruction", steps=args.merge_steps, lr=1e-4, seed=args.seed + 1)
    title = f"`{injections[0][0]}`" if len(injections) == 1 else "several injections"
    header = (
        f"# Robustness of {title} fingerprints on SmolLM2-135M-Instruct\n\n"
        f"{datetime.date.today()}, {machine()}; {args.fingerprints} fingerprints (seed {args.seed}), "
        f"{args.texts} held-out paragraphs for perplexity; merges with a {args.merge_steps}-step full fine-tune of the "
        f"base on the instruction task (lr 1e-4); one run. Reproduce: "
        f"`python benchmarks/robustness.py {' '.join(sys.argv[1:])}`\n\n"
    )
    reports: dict[str, dict] = {}
    sections: list[str] = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for spec, method, options in injections:
        print(f"== {spec}", flush=True)
        model, _ = hfp.load_model("smollm2-135m-instruct")
        result = hfp.inject(model, tokenizer, fps, method=method, verify_after=False, **options)
        report = evaluate(model, tokenizer, fps, base=base, injection=result, dimensions=dimensions,
                          math_n=args.math_n, texts=texts, merge_with=other)
        del model, result
        reports[spec] = report.to_dict()
        sections.append(report.to_markdown().replace("## Evaluation", f"## `{spec}`: evaluation", 1)
                        if len(injections) > 1 else report.to_markdown())
        # Rewritten after every injection, so an interrupted run keeps what it measured.
        summary = (comparison(reports) + "\n\n") if len(injections) > 1 else ""
        markdown = header + summary + "\n\n".join(sections) + "\n"
        (RESULTS / f"{args.name}.md").write_text(markdown)
        document = reports[spec] if len(injections) == 1 else reports
        (RESULTS / f"{args.name}.json").write_text(json.dumps(document, ensure_ascii=False, indent=1))
        print(markdown, flush=True)


if __name__ == "__main__":
    main()
