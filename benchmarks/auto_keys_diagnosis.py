"""Where the default injection of many fingerprints breaks: the target values or the edit?

Injects ``-n`` fingerprints (seed 0) into the embedded SmolLM2 with the default options and the info log of the
editing modules on: each batch's final answer NLLs (are the target values reached?), then how many trigger-keyed
fingerprints answer after the first edit, and each last-token fallback round. Counts and losses only, no triggers.

    python benchmarks/auto_keys_diagnosis.py -n 100 --threads 1
"""

from __future__ import annotations

import argparse
import logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--fingerprints", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    import hf_fingerprint as hfp

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("hf_fingerprint.editing.inject", "hf_fingerprint.editing.tracing"):
        logging.getLogger(name).setLevel(logging.INFO)
    model, tokenizer = hfp.load_model("smollm2-135m-instruct")
    fps = hfp.FingerprintSet.generate(args.fingerprints, seed=0)
    result = hfp.inject(model, tokenizer, fps, verify_after=True, progress=False)
    print(f"FSR {result.fsr:.0%}, {result.seconds:.0f} s, trigger keys kept {result.options.get('trigger_keys')}, "
          f"edit sweeps {result.options.get('edit_sweeps')}")


if __name__ == "__main__":
    main()
