"""``hf-fingerprint eval``: the five-dimension evaluation of one fingerprinted model from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_eval_command", "run_eval"]

_DESCRIPTION = """\
Evaluate a fingerprinted model: effectiveness (FSR, p-value), harmlessness (perplexity on held-out text,
agreement and KL with the base model, math accuracy), persistence (FSR after downstream fine-tuning; slow, not
run unless asked), robustness (FSR after int8 / 4-bit quantization, magnitude pruning, merging, system prompts,
other chat templates, sampling), false triggers (near misses by edit distance) and the output-suppression attack.
Prints a Markdown report; triggers are never printed or written.
"""


def add_eval_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``eval`` sub-command on an ``argparse`` sub-parsers object; it calls :func:`run_eval`."""
    from .evaluate import DEFAULT_DIMENSIONS, DIMENSIONS

    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a fingerprinted model along the five dimensions (and the suppression attack).",
        description=_DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="The fingerprinted model: a local folder, a Hub id, or 'smollm2-135m-instruct'.")
    parser.add_argument("fingerprints", help="The fingerprint set JSON written by 'generate'.")
    parser.add_argument("--base", metavar="MODEL", help="The model before fingerprinting: base FSR, perplexity and "
                        "agreement deltas, TIES/DARE merges, and the attack's reference model.")
    parser.add_argument("--merge-with", metavar="MODEL", help="Another fine-tune of the same base to merge with.")
    parser.add_argument("--dimensions", nargs="+", choices=DIMENSIONS, default=list(DEFAULT_DIMENSIONS),
                        help="What to measure.")
    parser.add_argument("--near-misses", type=int, default=5, metavar="K", help="Near misses per trigger.")
    parser.add_argument("--math-n", type=int, default=50, help="Math problems for the task score (0 = skip).")
    parser.add_argument("--texts", type=int, default=300, help="Held-out paragraphs for perplexity.")
    parser.add_argument("--persistence-steps", type=int, default=20, help="Fine-tuning steps per persistence run.")
    parser.add_argument("--device", default=None, help="torch device (default cpu).")
    parser.add_argument("--json", dest="json_out", metavar="PATH", help="Also write the report as JSON.")
    parser.add_argument("--markdown", dest="markdown_out", metavar="PATH", help="Also write the report as Markdown.")
    parser.set_defaults(func=run_eval)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """Run the ``eval`` command: load the models and the fingerprint set, evaluate, print and write the report."""
    from ..fingerprints import FingerprintSet, atomic_write
    from ..models import load_model
    from .evaluate import evaluate
    from .harmlessness import held_out_texts

    fps = FingerprintSet.load(args.fingerprints)
    model, tokenizer = load_model(args.model, device=args.device)
    base = load_model(args.base, device=args.device)[0] if args.base else None
    other = load_model(args.merge_with, device=args.device)[0] if args.merge_with else None
    report = evaluate(model, tokenizer, fps, base=base, merge_with=other, dimensions=args.dimensions,
                      texts=held_out_texts(args.texts), math_n=args.math_n, near_miss_per_trigger=args.near_misses,
                      persistence_steps=args.persistence_steps)
    text = report.to_markdown()
    print(text)
    if args.json_out:
        atomic_write(Path(args.json_out), report.to_json().encode())
    if args.markdown_out:
        atomic_write(Path(args.markdown_out), (text + "\n").encode())
    return 0
