"""Why many fingerprints fail together: what an edit writes at the other positions of the fingerprint prompts.

On the embedded SmolLM2, for n fingerprints (seed 0) keyed at the trigger, the AlphaEdit solve of the deepest
default layer is formed with unit-norm random residuals (the direction of each target does not matter here, the
sizes do), and the norm of dW k is read at each prompt's own key and at every other real position of the same
prompts (system prompt, trigger tokens, chat suffix): the edit should write its value at the first and nothing at
the others. Then the same with those positions' keys preserved at ``context_weight`` w (``inject`` option).
Numbers only, no triggers.

    python benchmarks/context_interference.py --name context_interference
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from injection import machine, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 1.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="context_interference")
    args = parser.parse_args()

    import torch

    import hf_fingerprint as hfp
    from hf_fingerprint.editing.alphaedit import range_basis
    from hf_fingerprint.editing.context import EditContext
    from hf_fingerprint.editing.layout import find_layout, get_module
    from hf_fingerprint.editing.tracing import _pad_id, build_prompts, make_batch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = hfp.load_model("smollm2-135m-instruct")
    layout = find_layout(model)
    layers = layout.default_layers()
    layer = layers[-1]
    rows = []
    for n in args.sizes:
        fps = hfp.FingerprintSet.generate(n, seed=0)
        prompts = build_prompts(tokenizer, fps.triggers, answers=fps.targets, key_position="trigger")
        batch = make_batch(prompts, range(n), _pad_id(model), torch.device("cpu"), with_answers=True)
        seen = {}

        def keep(_module, args):
            seen["keys"] = args[0].detach().double()

        hook = get_module(model, layout.module_name(layer, "down_proj")).register_forward_pre_hook(keep)
        with torch.no_grad():
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
        hook.remove()
        everything = seen["keys"]
        keys = everything[torch.arange(n), batch.key_index]
        others = batch.attention_mask.bool().clone()
        others[torch.arange(n), batch.key_index] = False
        context = everything[others]
        edit = EditContext(model=model, tokenizer=tokenizer, layout=layout, layers=layers, requests=prompts,
                           options={}, progress=False)
        B = edit.statistics_derived("range0.5", layer, lambda: range_basis(edit.statistics(layer), 0.5)).double()
        P = torch.eye(B.shape[0], dtype=torch.double) - B @ B.T
        alpha = 0.03 * float((keys**2).sum(1).mean())
        residual = torch.nn.functional.normalize(torch.randn(n, layout.hidden_size, dtype=torch.double), dim=1)
        for weight in args.weights:
            inner = keys.T @ keys + weight * context.T @ context
            V = torch.linalg.solve(P @ inner + alpha * torch.eye(P.shape[0], dtype=torch.double), P @ keys.T)
            dW = residual.T @ V.T
            own = (keys @ dW.T).norm(dim=1)
            other = (context @ dW.T).norm(dim=1)
            rows.append(dict(n=n, context_weight=weight, own_median=float(own.median()), own_min=float(own.min()),
                             other_median=float(other.median()), other_p90=float(other.quantile(0.9)),
                             other_max=float(other.max()), other_over_03=float((other > 0.3).double().mean()),
                             positions=int(context.shape[0])))
            print(json.dumps(rows[-1]), flush=True)
    lines = [f"What an edit writes elsewhere in the fingerprint prompts; SmolLM2-135M-Instruct, layer {layer}, "
             f"{machine()}. `python benchmarks/context_interference.py {' '.join(sys.argv[1:])}`", "",
             "| fingerprints | context_weight | own key: median (min) | other positions: median | 90th pct | max | "
             "share > 0.3 | positions |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['context_weight']:g} | {r['own_median']:.3f} ({r['own_min']:.3f}) | "
              f"{r['other_median']:.3f} | {r['other_p90']:.3f} | {r['other_max']:.3f} | {r['other_over_03']:.0%} | "
              f"{r['positions']} |" for r in rows]
    write_results(args.name, lines, rows)


if __name__ == "__main__":
    main()
