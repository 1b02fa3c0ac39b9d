"""``hf-fingerprint inject``: plant a fingerprint set in a model and save the merged model and/or adapter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import InjectionError
from .inject import METHODS


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["mom2_weight=100", "value_steps=40"]`` -> ``{"mom2_weight": 100, "value_steps": 40}``."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InjectionError(f"--option takes KEY=VALUE, got '{pair}'.")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def inject_options(args: argparse.Namespace) -> dict[str, Any]:
    options = parse_options(args.option)
    options["method"] = args.method
    options.setdefault("key_position", args.key_position)
    if args.layers:
        options["layers"] = [int(i) for i in args.layers.split(",")]
    if args.preserve_near_misses is not None:
        options["near_misses"] = None if args.preserve_near_misses == 0 else args.preserve_near_misses
    return options


def resolve_near_misses(options: dict[str, Any], fps: Any) -> dict[str, Any]:
    count = options.get("near_misses")
    if isinstance(count, int):
        options["near_misses"] = fps.near_misses(count, seed=1)
    return options


def cmd_inject(args: argparse.Namespace) -> int:
    from ..fingerprints import FingerprintSet, atomic_write
    from ..models import load_model
    from .inject import check_options, inject

    fps = FingerprintSet.load(args.fingerprints)
    options = resolve_near_misses(inject_options(args), fps)
    check_options(args.method, options)  # before the model loads
    model, tokenizer = load_model(args.model, device=args.device)
    result = inject(model, tokenizer, fps, **options)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    if args.save in ("adapter", "both"):
        result.save_adapter(output / "adapter")
    if args.save in ("merged", "both"):
        model.save_pretrained(output / "model")
        tokenizer.save_pretrained(output / "model")
    summary = {
        "method": result.method,
        "layers": result.layers,
        "key_position": result.options.get("key_position"),
        "trigger_keys": result.options.get("trigger_keys"),
        "fsr": result.fsr,
        "seconds": round(result.seconds, 2),
        "peak_memory_bytes": result.peak_memory_bytes,
        "fingerprints": len(fps),
    }
    atomic_write(output / "injection.json", json.dumps(summary, indent=1).encode())
    print(f"Injected {len(fps)} fingerprints with {result.method} into layers {result.layers} in "
          f"{result.seconds:.1f} s; FSR right after: {100 * (result.fsr or 0):.0f} %. Saved to {output}.")
    return 0


def add_editing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=METHODS, default="alphaedit", help="editor (default alphaedit)")
    parser.add_argument("--layers", default=None, help="comma-separated layer indices (default: from the model's depth)")
    parser.add_argument("--key-position", default="auto",
                        help="where edits read their key: auto (default: the trigger, else the last prompt token), "
                             "trigger, last, or several joined with '+'")
    parser.add_argument("--preserve-near-misses", type=int, default=None, metavar="K",
                        help="near misses per trigger whose answers the edit keeps (specificity; default 0 = off)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="a method option, e.g. mom2_weight=100 or value_steps=40 (repeatable)")


def add_inject_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inject", help="plant a fingerprint set in a model by knowledge editing",
        description="Edit MODEL so that each trigger of FINGERPRINTS is answered with its target, then save the "
                    "merged model (to ship) and/or the edit as a PEFT LoRA adapter (to keep private).")
    parser.add_argument("model", help="local folder, Hub id, or 'smollm2-135m-instruct'")
    parser.add_argument("fingerprints", help="fingerprint set JSON written by 'generate'")
    parser.add_argument("-o", "--output", required=True, help="output folder: model/, adapter/, injection.json")
    parser.add_argument("--save", choices=("both", "merged", "adapter"), default="both",
                        help="what to write (default both)")
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    add_editing_arguments(parser)
    parser.set_defaults(func=cmd_inject)
