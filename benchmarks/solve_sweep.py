"""Solve settings of an edit at fixed target values, on SmolLM2: FSR, perplexity change, near-miss false triggers.

With many fingerprints most of an injection's time goes to the target values (the optimisation at the last edited
layer), which depend only on the base model and the value options, not on how the edit is then solved (``alpha``,
``mom2_weight``, ``context_weight``, statistics, ...). This script computes the first edit's values once per run
and reuses them for every setting, each on a fresh copy of the model; the last-token fallback rounds, whose values
depend on the edited model, run in full. The first setting's values are computed in place, so its row is exactly
what ``inject`` gives.

    python benchmarks/solve_sweep.py --size 100 --values '{"value_noise": 0}' \
        --settings '{"mom2_weight": 0}' '{"mom2_weight": 1000}'

Every setting also gets the ``--values`` options. Writes ``benchmarks/results/<name>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

from injection import machine, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--values", default="{}", help="JSON options shared by all settings (value options here)")
    parser.add_argument("--settings", nargs="+", required=True, help="JSON options of each setting")
    parser.add_argument("--name", default="solve_sweep")
    args = parser.parse_args()
    try:  # all of them before the first (long) injection, so a typo in the last costs nothing
        parsed = [json.loads(text) for text in [args.values, *args.settings]]
    except json.JSONDecodeError as error:
        parser.error(f"--values and every --settings entry must be a JSON object: {error}")
    if not all(isinstance(p, dict) for p in parsed):
        parser.error("--values and every --settings entry must be a JSON object, e.g. '{\"mom2_weight\": 1000}'")
    settings = [{**parsed[0], **p} for p in parsed[1:]]
    from hf_fingerprint.editing.inject import check_options
    from hf_fingerprint.errors import InjectionError

    try:  # a misspelt option too
        for setting in settings:
            check_options(setting.get("method", "alphaedit"), setting)
    except InjectionError as error:
        parser.error(str(error))

    import hf_fingerprint as hfp
    from hf_fingerprint.editing import context as editing_context
    from hf_fingerprint.evaluation.harmlessness import perplexity

    saved: dict[str, object] = {}
    compute = editing_context.EditContext.target_values

    def reused(self, layer):
        # Only the first edit of an injection (the fallback rounds' contexts say key_position="last").
        if self.options.get("key_position") != "auto" or "z" not in saved:
            z = compute(self, layer)
            if self.options.get("key_position") == "auto":
                saved.update(z=z.clone(), keys=list(self.requests.key_index), trigger_keys=self.options["trigger_keys"])
            return z
        self.requests.key_index[:] = saved["keys"]
        self.options["trigger_keys"] = saved["trigger_keys"]
        return saved["z"].clone()

    editing_context.EditContext.target_values = reused
    base, tokenizer = hfp.load_model("smollm2-135m-instruct")
    fps = hfp.FingerprintSet.generate(args.size, seed=args.seed)
    near = fps.near_misses(2, seed=99)
    base_ppl = perplexity(base, tokenizer)
    del base
    rows = []
    for setting in settings:
        model, _ = hfp.load_model("smollm2-135m-instruct")
        began = time.perf_counter()
        result = hfp.inject(model, tokenizer, fps, verify_after=False, progress=False, **setting)
        seconds = time.perf_counter() - began
        report = hfp.verify(model, tokenizer, fps, near_misses=near, progress=False)
        change = perplexity(model, tokenizer) / base_ppl - 1
        rows.append(dict(setting=setting, fsr=report.fsr, trigger_keys=result.options.get("trigger_keys"),
                         near=report.near_miss_false_trigger_rate, ordinary=report.ordinary_false_trigger_rate,
                         perplexity_change=change, seconds=seconds))
        print(json.dumps(rows[-1]), flush=True)
        del model, result
    lines = [
        f"Solve settings at fixed target values, SmolLM2-135M-Instruct, {args.size} fingerprints (seed {args.seed}), "
        f"{datetime.date.today()}, {machine()}; one run each. The first row's values were computed in its own "
        f"injection (its time includes them); later rows reuse them (their time does not). Near misses: 2 per "
        f"trigger (seed 99). Perplexity on the 300 held-out stdlib paragraphs. "
        f"`python benchmarks/solve_sweep.py {' '.join(_quoted(a) for a in sys.argv[1:])}`\n",
        "| options | FSR | trigger keys | near-miss false triggers | ordinary false triggers | perplexity change | time (s) |",
        "|---|---|---|---|---|---|---|",
    ] + [f"| {', '.join(f'{k}={v}' for k, v in r['setting'].items()) or 'defaults'} | {100 * r['fsr']:.0f} % | "
         f"{r['trigger_keys']} | {100 * r['near']:.1f} % | {100 * r['ordinary']:.1f} % | "
         f"{100 * r['perplexity_change']:+.2f} % | {r['seconds']:.0f} |" for r in rows]
    write_results(args.name, lines, {"machine": machine(), "rows": rows})


def _quoted(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " {}\"") else arg


if __name__ == "__main__":
    main()
