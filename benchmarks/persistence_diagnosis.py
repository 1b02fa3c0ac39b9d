"""Why does fine-tuning erase an edit: do the keys (upstream) move, or do the layers after the edit read the
edited value differently (downstream)?

Injects the default edit (10 fingerprints, seed 0) into SmolLM2-135M-Instruct, records the output of the last
edited layer at each trigger's key position, fine-tunes with plain LoRA (r 16, all linear, lr 2e-4, math task,
batch 8, bf16 autocast), and then, per fingerprint, the answer's mean token NLL (teacher-forced) on:

- the edited model, and the fine-tuned one;
- the fine-tuned model with the edited model's value patched in at the key position (fine-tuned downstream);
- the edited model with the fine-tuned model's value patched in (fine-tuned upstream).

If the third stays high while the fourth stays low, the damage is downstream. Prints one line per fingerprint.

    python benchmarks/persistence_diagnosis.py --steps 25
"""

from __future__ import annotations

import argparse
import time

import torch

import hf_fingerprint as hfp
from hf_fingerprint.editing.tracing import build_prompts
from hf_fingerprint.evaluation import finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    args = parser.parse_args()
    model, tokenizer = hfp.load_model("smollm2-135m-instruct")
    fps = hfp.FingerprintSet.generate(10, seed=0)
    result = hfp.inject(model, tokenizer, fps, progress=False)
    last = result.layers[-1]
    prompts = build_prompts(tokenizer, fps.triggers, answers=fps.targets, key_position="trigger")
    print(f"FSR after injection {result.fsr:.2f}; edited layers {result.layers}", flush=True)

    @torch.no_grad()
    def answer_nll(m, i: int, patch: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        ids, key = prompts.ids[i] + prompts.answer_ids[i], prompts.key_index[i]
        seen = {}

        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            seen["value"] = hidden[0, key].clone()
            if patch is None:
                return output
            hidden = hidden.clone()
            hidden[0, key] = patch
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

        handle = m.model.layers[last].register_forward_hook(hook)
        try:
            logits = m(input_ids=torch.tensor([ids])).logits[0].float()
        finally:
            handle.remove()
        start = len(prompts.ids[i])
        answer = torch.tensor(prompts.answer_ids[i])
        log_probs = torch.log_softmax(logits[start - 1 : -1], -1)
        return float(-log_probs[torch.arange(len(answer)), answer].mean()), seen["value"]

    edited = [answer_nll(model, i) for i in range(len(fps))]
    started = time.perf_counter()
    tuned = finetune(model, tokenizer, "math", steps=args.steps, lr=args.lr, lora=not args.full, bf16=True)
    report = hfp.verify(tuned, tokenizer, fps, ordinary_prompts=(), progress=False)
    print(f"{'full' if args.full else 'LoRA'} fine-tuning, {args.steps} steps at lr {args.lr:g}: "
          f"{time.perf_counter() - started:.0f} s, FSR {report.fsr:.2f}", flush=True)
    print("| fingerprint | answers after | NLL edited | NLL fine-tuned | fine-tuned + edited value | edited + fine-tuned "
          "value | value drift |\n|---|---|---|---|---|---|---|")
    for i, (nll_edited, value) in enumerate(edited):
        nll_tuned, tuned_value = answer_nll(tuned, i)
        downstream, _ = answer_nll(tuned, i, patch=value)
        upstream, _ = answer_nll(model, i, patch=tuned_value)
        drift = float((tuned_value - value).norm() / value.norm())
        print(f"| {i} | {'yes' if report.outcomes[i].matched else 'no'} | {nll_edited:.3f} | {nll_tuned:.3f} "
              f"| {downstream:.3f} | {upstream:.3f} | {drift:.3f} |", flush=True)


if __name__ == "__main__":
    main()
