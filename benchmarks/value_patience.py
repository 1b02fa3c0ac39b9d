"""What ``value_patience`` saves: injection with the trigger-key value steps given up when an answer has not moved
(the default, patience 10) and run to the end (``value_patience=0``), side by side, on the embedded SmolLM2 and on
a random 16-layer Llama (SmolLM2's tokenizer; random attention carries nothing from the trigger). 10 fingerprints
(seed 0), statistics cached after the first call; prints seconds, FSR and the value steps run.

    python benchmarks/value_patience.py --name value_patience
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from injection import machine, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="value_patience")
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import hf_fingerprint as hfp

    torch.set_num_threads(args.threads)
    steps = []

    class Count(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("target values, step"):
                steps.append(1)

    tracing = logging.getLogger("hf_fingerprint.editing.tracing")
    tracing.setLevel(logging.DEBUG)
    tracing.addHandler(Count())
    smollm, tokenizer = hfp.load_model("smollm2-135m-instruct")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=16, num_attention_heads=8,
                         num_key_value_heads=4, head_dim=64, vocab_size=len(tokenizer), tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    models = {"smollm2-135m-instruct": smollm, "random llama, 16 layers": LlamaForCausalLM(config).eval()}
    fps = hfp.FingerprintSet.generate(10, seed=0)
    rows = []
    for name, model in models.items():
        hfp.inject(model, tokenizer, fps, verify_after=False, progress=False).revert()  # statistics, not timed
        for patience in (10, 0):
            steps.clear()
            result = hfp.inject(model, tokenizer, fps, progress=False, value_patience=patience)
            rows.append(dict(model=name, value_patience=patience, seconds=result.seconds, fsr=result.fsr,
                             value_steps=len(steps), trigger_keys=result.options.get("trigger_keys")))
            print(json.dumps(rows[-1]), flush=True)
            result.revert()
    lines = [f"value_patience side by side; {machine()}. `python benchmarks/value_patience.py "
             f"{' '.join(sys.argv[1:])}`", "",
             "| model | value_patience | injection (s) | FSR | value steps run (all batches) | trigger keys |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['value_patience']} | {r['seconds']:.1f} | {r['fsr']:.0%} | {r['value_steps']} | "
              f"{r['trigger_keys']} |" for r in rows]
    write_results(args.name, lines, rows)


if __name__ == "__main__":
    main()
