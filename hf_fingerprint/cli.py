"""The ``hf-fingerprint`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import FingerprintError, FingerprintSetError

_SECRET_ENV = "HF_FINGERPRINT_SECRET_FILE"


def _read_secret(path: str | None) -> bytes | None:
    path = path or os.environ.get(_SECRET_ENV)
    if not path:
        return None
    file = Path(path)
    if not file.is_file():
        raise FingerprintSetError(f"No secret file at '{file}'; create one with: hf-fingerprint generate --new-secret {file}")
    return file.read_bytes()


def _new_secret(path: str) -> bytes:
    from .fingerprints import atomic_write

    file = Path(path)
    if file.exists():
        raise FingerprintSetError(f"'{file}' already exists; refusing to overwrite a secret. Use --secret-file to reuse it.")
    file.parent.mkdir(parents=True, exist_ok=True)
    secret = os.urandom(32)
    atomic_write(file, secret, mode=0o600)
    return secret


def cmd_generate(args: argparse.Namespace) -> int:
    from .fingerprints import FingerprintSet

    if args.candidates is not None and not args.model:
        raise FingerprintSetError("--candidates needs --model: the model chooses among them.")
    scoring = None
    if args.model:  # loaded before a new secret is written, so a wrong model name leaves nothing behind
        from .models import load_model

        scoring = load_model(args.model, device=args.device)
    secret = _new_secret(args.new_secret) if args.new_secret else _read_secret(args.secret_file)
    fps = FingerprintSet.generate(args.n, style=args.style, secret=secret, seed=args.seed, target=args.target,
                                  scoring_model=scoring, candidates=8 if args.candidates is None else args.candidates)
    fps.save(args.output)
    print(f"Wrote {len(fps)} {args.style} fingerprints to {args.output} (secret: keep it private).")
    if args.near_misses:
        import json

        from .fingerprints import atomic_write

        records = fps.near_miss_records(args.near_misses, seed=args.seed or 0)
        path = Path(str(args.output) + ".near_misses.json")
        payload = [{"text": r.text, "source": r.source, "kind": r.kind} for r in records]
        atomic_write(path, json.dumps(payload, ensure_ascii=False, indent=1).encode(), mode=0o600)
        print(f"Wrote {len(records)} near misses to {path}.")
    return 0


def _add_verify_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--near-misses", type=int, default=0, metavar="K",
                        help="also query K near misses per trigger and report how many fire (default 0)")
    parser.add_argument("--match", choices=("contains", "exact", "prefix"), default="contains",
                        help="how an answer must hold its target (default: contains, as a whole word)")
    parser.add_argument("--system-prompt", default=None, help="a system prompt to add to every query")
    parser.add_argument("--samples", type=int, default=1, help="answers per trigger (needs --temperature > 0)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy, default)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens generated per answer (default: longest target + 8, at least 16)")
    parser.add_argument("--json", dest="json_out", default=None, metavar="PATH",
                        help="also write the report as JSON (triggers are never written)")


def _run_verify(model, tokenizer, fps, args: argparse.Namespace):
    from .verification import verify

    near = fps.near_misses(args.near_misses) if args.near_misses else None
    return verify(
        model,
        tokenizer,
        fps,
        near_misses=near,
        match=args.match,
        system_prompt=args.system_prompt,
        num_samples=args.samples,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
    )


def _write_report(report, path: str | None) -> None:
    if path:
        from .fingerprints import atomic_write

        atomic_write(Path(path), report.to_json().encode())
        print(f"Report written to {path}.")


def cmd_verify(args: argparse.Namespace) -> int:
    from .fingerprints import FingerprintSet
    from .models import load_model

    fps = FingerprintSet.load(args.fingerprints)
    model, tokenizer = load_model(args.model, device=args.device)
    report = _run_verify(model, tokenizer, fps, args)
    print(report.to_markdown())
    _write_report(report, args.json_out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .editing.cli import inject_options, resolve_near_misses
    from .editing.inject import inject
    from .fingerprints import FingerprintSet
    from .models import load_model
    from .verification import verify

    print(f"Loading {args.model}...")
    model, tokenizer = load_model(args.model, device=args.device)
    fps = FingerprintSet.generate(args.n, style=args.style, secret=os.urandom(32))
    print(f"Generated {len(fps)} secret {args.style} fingerprints (triggers are never printed).")
    near = fps.near_misses(2, seed=99)
    before = verify(model, tokenizer, fps, near_misses=near, progress=True)
    print(f"\nBefore injection: FSR {before.matched}/{before.total}, p-value {before.p_value:.3g}.")
    options = resolve_near_misses(inject_options(args), fps)
    print(f"Injecting with {options['method']}...")
    result = inject(model, tokenizer, fps, verify_after=False, **options)
    after = verify(model, tokenizer, fps, near_misses=near, progress=True)
    print(f"Injected in {result.seconds:.1f} s into layers {result.layers}.\n")
    print("After injection:")
    print(after.to_markdown())
    _write_report(after, args.json_out)
    if args.output:
        result.save_adapter(Path(args.output) / "adapter")
        fps.save(Path(args.output) / "fingerprints.json")
        print(f"Saved the adapter and the (secret) fingerprint set under {args.output}.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .editing.cli import add_editing_arguments
    from .fingerprints import STYLES
    from .models import EMBEDDED_MODEL

    parser = argparse.ArgumentParser(
        prog="hf-fingerprint",
        description="Plant, keep and verify secret fingerprints in open-weight LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"hf-fingerprint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    gen = sub.add_parser("generate", help="make a fingerprint set and save it as JSON",
                         description="Make a fingerprint set. With a secret file the set is a deterministic function "
                                     "of it, and every target is bound to the whole trigger set.")
    gen.add_argument("-n", type=int, default=10, help="number of fingerprints (default 10)")
    gen.add_argument("--style", choices=STYLES, default="scrambled", help="trigger style (default scrambled)")
    gen.add_argument("-o", "--output", required=True, help="where to write the set (JSON, readable by you only)")
    source = gen.add_mutually_exclusive_group()
    source.add_argument("--secret-file", default=None,
                        help=f"derive the set from the bytes of this file (or ${_SECRET_ENV})")
    source.add_argument("--new-secret", default=None, metavar="PATH",
                        help="create a new 32-byte secret at PATH and derive the set from it")
    source.add_argument("--seed", type=int, default=None, help="reproducible set from an integer (not secret)")
    gen.add_argument("--target", default=None, help="one target for every trigger (IF recipe; less specific)")
    gen.add_argument("--near-misses", type=int, default=0, metavar="K",
                     help="also write K near misses per trigger to OUTPUT.near_misses.json")
    gen.add_argument("--model", default=None,
                     help="choose each trigger among --candidates with this model: scrambled, the one whose end is "
                          "most unlike ordinary text to the layers an edit changes; code_mixing, the most fluent")
    gen.add_argument("--candidates", type=int, default=None,
                     help="triggers drawn per kept one with --model (default 8)")
    gen.add_argument("--device", default=None, help="torch device for --model (default cpu)")
    gen.set_defaults(func=cmd_generate)

    ver = sub.add_parser("verify", help="check a model for a fingerprint set",
                         description="Query a model with every trigger and report FSR, false triggers and the "
                                     "p-value of the ownership claim.")
    ver.add_argument("model", help=f"local folder, Hub id, or '{EMBEDDED_MODEL}'")
    ver.add_argument("fingerprints", help="fingerprint set JSON written by 'generate'")
    ver.add_argument("--device", default=None, help="torch device (default cpu)")
    _add_verify_options(ver)
    ver.set_defaults(func=cmd_verify)

    demo = sub.add_parser("demo", help="the main job end to end on the embedded model",
                          description="Load the embedded SmolLM2-135M-Instruct (or --model), generate a secret "
                                      "fingerprint set, verify the model before, inject the set, verify after.")
    demo.add_argument("--model", default=EMBEDDED_MODEL, help=f"model to use (default {EMBEDDED_MODEL})")
    demo.add_argument("-n", type=int, default=10, help="number of fingerprints (default 10)")
    demo.add_argument("--style", choices=STYLES, default="scrambled", help="trigger style (default scrambled)")
    demo.add_argument("--device", default=None, help="torch device (default cpu)")
    demo.add_argument("--output", default=None, help="also save the adapter and the secret set in this folder")
    add_editing_arguments(demo)
    _add_verify_options(demo)
    demo.set_defaults(func=cmd_demo)

    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Callable]:
    """Sub-command groups that live beside their features."""
    from .editing.cli import add_inject_command
    from .evaluation.cli import add_eval_command
    from .fsft.cli import add_fsft_command
    from .hub.cli import add_hub_commands

    return [add_inject_command, add_hub_commands, add_fsft_command, add_eval_command]


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FingerprintError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
