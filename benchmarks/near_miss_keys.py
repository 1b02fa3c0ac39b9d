"""Why near misses fire: how much of the edit a near miss receives, and how close its key is to its trigger's.

Injects 10 fingerprints (seed 0) into the embedded SmolLM2 with the given options, then for 5 near misses per
trigger (seed 99, none of them preserved by the editor): whether the answer contains a target, the key's cosine to
its trigger's key at each edited layer (down_proj input at the last token of the text), and the share of the
trigger's edit it receives, sum_l <dW_l k_nm, dW_l k_t> / sum_l |dW_l k_t|^2. Also the same key cosines on the
unedited model at every second layer (is any layer less local?). Kinds, distances and numbers only, no triggers.

    python benchmarks/near_miss_keys.py --name near_miss_keys
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from injection import machine, parse_options  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--option", action="append", default=[], help="an inject option, KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="near_miss_keys")
    args = parser.parse_args()

    import torch

    import hf_fingerprint as hfp
    from hf_fingerprint.editing.layout import find_layout
    from hf_fingerprint.editing.tracing import build_prompts, capture
    from hf_fingerprint.evaluation.harmlessness import perplexity
    from hf_fingerprint.generation import generate
    from hf_fingerprint.verification import matches

    torch.set_num_threads(args.threads)
    options = parse_options(",".join(args.option)) if args.option else {}
    model, tokenizer = hfp.load_model("smollm2-135m-instruct")
    layout = find_layout(model)
    fps = hfp.FingerprintSet.generate(10, seed=0)
    records = fps.near_miss_records(5, seed=99)
    texts = [r.text for r in records]
    cos = torch.nn.functional.cosine_similarity

    every = list(range(0, layout.num_layers, 2))
    trigger_keys = capture(model, layout, build_prompts(tokenizer, fps.triggers, key_position="trigger"), key_layers=every)[0]
    near_keys = capture(model, layout, build_prompts(tokenizer, texts, key_position="trigger"), key_layers=every)[0]
    base_ppl = perplexity(model, tokenizer)

    result = hfp.inject(model, tokenizer, fps, verify_after=False, progress=False, **options)
    ppl_change = perplexity(model, tokenizer) / base_ppl - 1
    fsr = hfp.verify(model, tokenizer, fps, ordinary_prompts=(), progress=False).fsr
    answers = generate(model, tokenizer, texts)
    fired = [any(matches(a[0], fp.target) for fp in fps) for a in answers]

    layers = result.layers
    kt = capture(model, layout, build_prompts(tokenizer, fps.triggers, key_position="trigger"), key_layers=layers)[0]
    kn = capture(model, layout, build_prompts(tokenizer, texts, key_position="trigger"), key_layers=layers)[0]
    by_module = {d.module: d.dense() for d in result.deltas}
    updates = {l: by_module[layout.module_name(l, "down_proj")] for l in layers}
    rows = []
    for i, record in enumerate(records):
        s = record.source
        share = sum(float((updates[l] @ kn[l][i]) @ (updates[l] @ kt[l][s])) for l in layers)
        share /= sum(float((updates[l] @ kt[l][s]).square().sum()) for l in layers)
        rows.append(dict(kind=record.kind, distance=record.distance(fps[s].trigger), fired=fired[i], share=share,
                         key_cos=min(float(cos(kt[l][s], kn[l][i], dim=0)) for l in layers),
                         base_cos={l: float(cos(trigger_keys[l][s], near_keys[l][i], dim=0)) for l in every}))

    def summary(chosen: list[dict]) -> str:
        if not chosen:
            return "- | - | -"
        return (f"{statistics.median(r['share'] for r in chosen):.2f} | "
                f"{statistics.median(r['key_cos'] for r in chosen):.3f} | {min(r['key_cos'] for r in chosen):.3f}")

    lines = [
        f"Near misses and the edit, SmolLM2-135M-Instruct, {machine()}; `python benchmarks/near_miss_keys.py "
        + "".join(f"--option {o} " for o in args.option) + f"--name {args.name}`.", "",
        f"Injection: FSR {100 * fsr:.0f} %, perplexity {100 * ppl_change:+.2f} %, {result.seconds:.0f} s, "
        f"{result.options.get('trigger_keys')} of 10 keyed at the trigger. Near misses (5 per trigger, seed 99) "
        f"that fire: {sum(fired)} of {len(fired)}.", "",
        "| near misses | count | share of the trigger's edit (median) | key cosine, lowest edited layer (median) | (min) |",
        "|---|---|---|---|---|",
        f"| fire | {sum(fired)} | {summary([r for r in rows if r['fired']])} |",
        f"| do not fire | {len(rows) - sum(fired)} | {summary([r for r in rows if not r['fired']])} |",
        "", "By kind (fired / total): " + ", ".join(
            f"{k} {sum(r['fired'] for r in rows if r['kind'] == k)}/{sum(r['kind'] == k for r in rows)}"
            for k in sorted({r['kind'] for r in rows})) + ".", "",
        "Unedited model, key cosine of the near misses that fired to their trigger's key, by layer (median / min):", "",
        "| layer | " + " | ".join(str(l) for l in every) + " |", "|---|" + "---|" * len(every),
        "| median | " + " | ".join(f"{statistics.median(r['base_cos'][l] for r in rows if r['fired']):.3f}"
                                  for l in every) + " |" if any(fired) else "| median | (none fired) |",
        "| min | " + " | ".join(f"{min(r['base_cos'][l] for r in rows if r['fired']):.3f}"
                               for l in every) + " |" if any(fired) else "",
    ]
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps(dict(options=options, fsr=fsr, perplexity_change=ppl_change,
                                                           seconds=result.seconds, rows=rows), indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
