"""Where an edit's perplexity cost goes: per edited layer, per token, and whether the layers' changes add up.

Injects ``--size`` fingerprints (seed 0) into the embedded SmolLM2 with the given options, then, on the held-out
paragraphs the perplexity benchmark uses:

- the perplexity change with every edited layer and with each layer's update alone;
- how the change of the next-token NLL spreads over tokens (the share of the total carried by the 1 % and 5 % of
  tokens that lose most; the share of tokens that gain), over positions, and over input tokens (a trigger's last
  token, where trigger keys are read; another token of some trigger; a token in no trigger);
- per edited layer, the update's output on the unedited model's keys of those tokens (dW k): its mean squared
  norm, and E|sum_l dW_l k_l|^2 / sum_l E|dW_l k_l|^2, which is 1 when the layers' changes are uncorrelated and
  up to the number of layers when they point the same way (then a penalty on their sum, across layers, would
  cut the cost; when it is near 1, it would not).

    python benchmarks/perplexity_breakdown.py --size 100 --option context_weight=0.1 --option mom2_weight=1000 \\
        --option stats_tokens=80000 --name perplexity_breakdown_100

Writes ``benchmarks/results/<name>.{md,json}``; numbers only, no triggers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from injection import machine, parse_options, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--option", action="append", default=[], help="an inject option, KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="perplexity_breakdown")
    args = parser.parse_args()
    if args.size < 1:
        parser.error("--size must be at least 1")
    options = parse_options(",".join(args.option)) if args.option else {}
    from hf_fingerprint.editing.inject import check_options
    from hf_fingerprint.errors import InjectionError

    try:  # a misspelt option fails here, before the model loads
        check_options(options.get("method", "alphaedit"), options)
    except InjectionError as error:
        parser.error(str(error))

    import torch
    import torch.nn.functional as F

    import hf_fingerprint as hfp
    from hf_fingerprint.evaluation.harmlessness import _right_padded, _token_ids, held_out_texts
    from hf_fingerprint.generation import pad_token_id

    torch.set_num_threads(args.threads)
    model, tokenizer = hfp.load_model("smollm2-135m-instruct")
    fps = hfp.FingerprintSet.generate(args.size, seed=0)
    encoded = [ids[:256] for ids in _token_ids(tokenizer, held_out_texts())]  # as perplexity() reads them
    encoded = [ids for ids in encoded if len(ids) >= 2]
    pad = pad_token_id(tokenizer)

    @torch.no_grad()
    def token_nll(keys_of: list[str] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Every predicted token's NLL (flat, text after text) and, for ``keys_of``, the modules' inputs there."""
        keys: dict[str, list[torch.Tensor]] = {name: [] for name in keys_of}
        hooks = [model.get_submodule(name).register_forward_pre_hook(
            lambda _m, inputs, name=name: keys[name].append(inputs[0].detach().float())) for name in keys_of]
        rows = []
        try:
            for start in range(0, len(encoded), 8):
                chunk = encoded[start:start + 8]
                input_ids, mask = _right_padded(chunk, pad)
                logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
                nll = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
                rows += [nll[i, : len(ids) - 1] for i, ids in enumerate(chunk)]
                for name in keys_of:  # the key of each position that predicts a token
                    batch = keys[name].pop()
                    keys[name].append(torch.cat([batch[i, : len(ids) - 1] for i, ids in enumerate(chunk)]))
        finally:
            for hook in hooks:
                hook.remove()
        return torch.cat(rows), {name: torch.cat(parts) for name, parts in keys.items()}

    def change(nll: torch.Tensor) -> float:
        return float((nll.mean() - base.mean()).exp() - 1)

    result = hfp.inject(model, tokenizer, fps, progress=False, **options)
    result.revert()
    names = [d.module for d in result.deltas]
    base, keys = token_nll(names)
    result.reapply()
    edited, _ = token_nll()
    diff = edited - base
    total = float(diff.sum())
    ranked = diff.sort(descending=True).values

    alone = {}
    result.revert()
    for delta in result.deltas:
        weight = delta.parameter(model)
        with torch.no_grad():
            weight.add_(delta.dense().to(weight.dtype))
        alone[delta.module] = change(token_nll()[0])
        with torch.no_grad():
            weight.sub_(delta.dense().to(weight.dtype))
    result.reapply()

    outputs = {d.module: (keys[d.module] @ d.V) @ d.U.T if d.U is not None else keys[d.module] @ d.dense().T
               for d in result.deltas}
    energy = {name: float(out.square().sum(1).mean()) for name, out in outputs.items()}
    summed = float(sum(outputs.values()).square().sum(1).mean())
    cosines = {a: {b: float(F.cosine_similarity(outputs[a], outputs[b], dim=1).mean()) for b in names} for a in names}
    positions = torch.cat([torch.arange(len(ids) - 1) for ids in encoded])
    spans = [(0, 1), (1, 4), (4, 16), (16, 64), (64, 256)]
    by_position = {f"{lo}-{hi - 1}": dict(tokens=int(((positions >= lo) & (positions < hi)).sum()),
                                          mean=float(diff[(positions >= lo) & (positions < hi)].mean()),
                                          share=float(diff[(positions >= lo) & (positions < hi)].sum()) / total)
                   for lo, hi in spans if bool(((positions >= lo) & (positions < hi)).any())}
    top = {f"{p:g} %": float(ranked[: max(1, int(p / 100 * len(diff)))].sum()) / total for p in (1, 5)}
    # which input tokens the loss sits on: a trigger's last token (where trigger keys are read), another trigger token
    from hf_fingerprint.editing.tracing import build_prompts

    prompts = build_prompts(tokenizer, fps.triggers, answers=fps.targets, key_position="trigger")
    keyed = {ids[k] for ids, k in zip(prompts.ids, prompts.key_index)}
    in_triggers = {t for text in fps.triggers for t in tokenizer(text, add_special_tokens=False)["input_ids"]}
    inputs = torch.tensor([t for ids in encoded for t in ids[:-1]])
    kinds = {"keyed trigger token": torch.tensor([t in keyed for t in inputs.tolist()]),
             "other trigger token": torch.tensor([t in in_triggers and t not in keyed for t in inputs.tolist()])}
    kinds["no trigger token"] = ~(kinds["keyed trigger token"] | kinds["other trigger token"])
    worst = torch.zeros_like(diff, dtype=torch.bool)
    worst[diff.argsort(descending=True)[: max(1, len(diff) // 100)]] = True
    by_input = {kind: dict(tokens=int(m.sum()), mean=float(diff[m].mean()) if bool(m.any()) else 0.0,
                           share=float(diff[m].sum()) / total, worst=int((m & worst).sum()))
                for kind, m in kinds.items()}

    lines = [
        f"Perplexity breakdown, SmolLM2-135M-Instruct, {machine()}; `python benchmarks/perplexity_breakdown.py "
        f"--size {args.size} " + "".join(f"--option {o} " for o in args.option) + f"--name {args.name}`.", "",
        f"Injection of {args.size} fingerprints: FSR {100 * result.fsr:.0f} %, "
        f"{result.options.get('trigger_keys')} keyed at the trigger, {result.seconds:.0f} s. Held-out text: "
        f"{len(encoded)} paragraphs, {len(diff)} predicted tokens.", "",
        f"Perplexity change, every layer: **{100 * change(edited):+.2f} %**; the layers alone add up to "
        f"{100 * sum(alone.values()):+.2f} %.", "",
        "| edited module | perplexity change alone | E abs(dW k)^2 on held-out keys | mean cosine of dW k to the other layers' |",
        "|---|---|---|---|",
        *[f"| {n} | {100 * alone[n]:+.2f} % | {energy[n]:.1f} | "
          f"{sum(cosines[n][m] for m in names if m != n) / max(1, len(names) - 1):+.3f} |" for n in names],
        "",
        f"E abs(sum_l dW_l k_l)^2 / sum_l E abs(dW_l k_l)^2 = **{summed / sum(energy.values()):.3f}** "
        f"(1: uncorrelated across layers; {len(names)}: aligned).", "",
        f"NLL change per token: mean {float(diff.mean()):+.4f}; the 1 % of tokens that lose most carry "
        f"{100 * top['1 %']:.0f} % of the total, the 5 % {100 * top['5 %']:.0f} %; "
        f"{100 * float((diff < 0).float().mean()):.0f} % of tokens gain.", "",
        "| positions | tokens | mean NLL change | share of the total |", "|---|---|---|---|",
        *[f"| {span} | {v['tokens']} | {v['mean']:+.4f} | {100 * v['share']:.1f} % |" for span, v in by_position.items()],
        "", f"By the input token at the predicting position ({len(keyed)} distinct tokens keyed, "
        f"{len(in_triggers)} in the triggers):", "",
        "| input token | tokens | mean NLL change | share of the total | of the 1 % that lose most |",
        "|---|---|---|---|---|",
        *[f"| {kind} | {v['tokens']} | {v['mean']:+.4f} | {100 * v['share']:.1f} % | {v['worst']} |"
          for kind, v in by_input.items()],
    ]
    write_results(args.name, lines, dict(size=args.size, options=options, fsr=result.fsr, seconds=result.seconds,
                                         trigger_keys=result.options.get("trigger_keys"),
                                         perplexity_change=change(edited), alone=alone, energy=energy,
                                         summed_energy=summed, cosines=cosines, by_position=by_position, top=top,
                                         by_input=by_input,
                                         tokens_gaining=float((diff < 0).float().mean())))


if __name__ == "__main__":
    main()
