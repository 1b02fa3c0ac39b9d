"""FSFT's replay pass (answer replay + key anchor): its prompts packed end to end in one row vs left-padded rows.

On a CPU the replay and the anchor take a forward and backward pass of their own over ``fsft_anchor_prompts``
fingerprint prompts (~80-140 tokens each, SmolLM2's template around a scrambled trigger). Padded to the longest,
a batch of 4 holds ~25 % padding; packed (position ids restarting at 0, no attention mask: transformers'
packed-sequence format) it holds only the prompts' tokens. This times both layouts of the same prompts, same
losses, side by side: SmolLM2-135M-Instruct, 10 fingerprints, the anchor on the default edited layers, forward
and backward as the trainer runs them, in rounds of a fresh random order; it reports the median time per pass of
each, the median of the per-round ratios and the token counts.

    python benchmarks/replay_pass.py --rounds 30 --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import random
import statistics
import sys
import time

from injection import machine, write_results


def padded_pass(replay, anchor, model, rows):
    """The layout before packing: the rows left-padded to the longest, logits at the answer positions."""
    import torch.nn.functional as F

    from hf_fingerprint.editing.tracing import _pad_id, make_batch
    from hf_fingerprint.generation import model_device

    batch = make_batch(replay._prompts, rows, _pad_id(model), model_device(model), with_answers=True)
    first = int(batch.answer_mask.float().argmax(-1).min()) - 1
    with anchor.watching(batch.key_index, rows) as keys:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False,
                       logits_to_keep=batch.input_ids.shape[1] - first).logits
    labels = batch.labels[:, first + 1:]
    logits = logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                          reduction="none").view(labels.shape)
    mask = labels != -100
    return ((nll * mask).sum(-1) / mask.sum(-1)).mean(), anchor.loss(keys, rows), batch.input_ids.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="rounds left out of the statistics")
    parser.add_argument("--prompts", type=int, default=4, help="fingerprint prompts per pass (fsft_anchor_prompts)")
    parser.add_argument("--bf16", action="store_true", help="under bfloat16 autocast, as the trainer with bf16=True")
    parser.add_argument("--name", default="replay_pass")
    args = parser.parse_args()

    import torch

    import hf_fingerprint as hfp
    from hf_fingerprint.editing.layout import find_layout
    from hf_fingerprint.fsft.anchor import KeyAnchor
    from hf_fingerprint.fsft.replay import AnswerReplay

    model, tokenizer = hfp.load_model("smollm2-135m-instruct")
    model.train()
    fingerprints = hfp.FingerprintSet.generate(10, seed=0)
    layout = find_layout(model)
    modules = [model.get_submodule(layout.module_name(layer, "down_proj")) for layer in layout.default_layers()]
    anchor = KeyAnchor(model, tokenizer, fingerprints.triggers, modules, per_step=args.prompts)
    replay = AnswerReplay(tokenizer, fingerprints.triggers, fingerprints.targets, per_step=args.prompts)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    def run(layout_name: str, rows: list[int]) -> tuple[float, float, int]:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with autocast():
            if layout_name == "packed":
                loss, anchor_loss = replay.with_anchor(model, anchor, rows)
                tokens = sum(replay.row_lengths(rows))
            else:
                loss, anchor_loss, tokens = padded_pass(replay, anchor, model, rows)
        (loss + anchor_loss).backward()
        return time.perf_counter() - start, loss.item(), tokens

    layouts = ("padded", "packed")
    order = random.Random(0)
    times = {name: [] for name in layouts}
    tokens = {name: [] for name in layouts}
    losses = []
    for round_index in range(args.rounds + args.warmup):
        rows = replay.next_rows()
        shuffled = list(layouts)
        order.shuffle(shuffled)
        result = {name: run(name, rows) for name in shuffled}
        losses.append(abs(result["packed"][1] - result["padded"][1]) / result["padded"][1])
        if round_index >= args.warmup:
            for name in layouts:
                times[name].append(result[name][0])
                tokens[name].append(result[name][2])
        print(f"round {round_index}: " + ", ".join(f"{n} {result[n][0]:.3f} s" for n in layouts), flush=True)

    paired = statistics.median(p / q for p, q in zip(times["packed"], times["padded"]))
    lines = [
        f"Replay pass, {datetime.date.today()}, {machine()}; SmolLM2, "
        f"{args.prompts} prompts per pass, anchor on layers {layout.default_layers()}, "
        f"{'bf16 autocast' if args.bf16 else 'float32'}, {args.rounds} rounds after {args.warmup} warm-up. "
        f"`python benchmarks/replay_pass.py {' '.join(sys.argv[1:])}`",
        "",
        "| layout | median s per pass (forward + backward) | mean tokens per pass | vs padded (paired median) |",
        "|---|---|---|---|",
    ]
    for name in layouts:
        ratio = f"{paired:.3f}x" if name == "packed" else "1"
        lines.append(f"| {name} | {statistics.median(times[name]):.3f} | {statistics.mean(tokens[name]):.0f} | "
                     f"{ratio} |")
    lines += ["", f"Largest relative difference of the replay loss between the layouts: {max(losses):.1e}."]
    write_results(args.name, lines, {"machine": machine(), "threads": torch.get_num_threads(), "args": vars(args),
                                     "times": times, "tokens": tokens, "paired_ratio": paired,
                                     "loss_difference": max(losses)})


if __name__ == "__main__":
    main()
