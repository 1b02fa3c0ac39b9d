"""Injection and FSFT at the research's model sizes: random weights in the shapes of Llama-3.2-3B and Qwen3-8B.

Meant for a GPU (bf16 weights on CUDA); ``--shapes tiny`` checks the script on a CPU. The weights are random, so
the edits' FSR says little (random attention carries nothing from the trigger and every fingerprint takes the
slow path: trigger keys first, then the last-token fallback); the times and memory are what the sizes cost.

Per shape: one injection with a fresh statistics cache (covariance statistics and null-space bases computed),
then ``--repeats`` injections with the statistics cached (the model reverted in between), and one of those under
cProfile (not timed). For ``--fsft-shape``: seconds per optimizer step of TRL's SFTTrainer and of FSFTTrainer
(penalty only; penalty + key anchor + answer replay with 4 prompts, joint and separate pass, and with 2), batch 8,
up to 256 tokens, full fine-tuning in bf16, the trainers interleaved step by step in this process (one thread each,
one step at a time, each round in a random order), the median step after the warm-up steps.

    python benchmarks/paper_shapes.py --tokenizer DIR --out DIR       # on the GPU machine
    python benchmarks/paper_shapes.py --shapes tiny --fsft-shape tiny --tokenizer DIR --out /tmp/shapes
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from interleaved import interleaved_step_times, summarise, sync

SHAPES = {
    # config.json of meta-llama/Llama-3.2-3B-Instruct and Qwen/Qwen3-8B (sizes only)
    "llama-3.2-3b": ("llama", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                   num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                                   tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=131072)),
    "qwen3-8b": ("qwen3", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                               tie_word_embeddings=False, rope_theta=1000000.0, max_position_embeddings=40960)),
    "tiny": ("llama", dict(hidden_size=128, intermediate_size=384, num_hidden_layers=8, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=32, vocab_size=49152, tie_word_embeddings=True)),
}

# The README's persisting FSFT setting: lambda 100 (the default), key anchor 100, answer replay 0.2, 4 prompts.
PERSISTING = dict(fsft_anchor_lambda=100.0, fsft_replay_lambda=0.2)


def build(shape: str, tokenizer, device: torch.device):
    """A random-weight model of ``shape`` in bf16 (float32 on a CPU), built directly on ``device``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    arch, sizes = SHAPES[shape]
    config = (LlamaConfig if arch == "llama" else Qwen3Config)(
        **sizes, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def allocated() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def time_injection(shape: str, tokenizer, device, args, out: Path) -> dict:
    import hf_fingerprint as hfp

    model = build(shape, tokenizer, device)
    params = sum(p.numel() for p in model.parameters())
    weights = allocated()
    fps = hfp.FingerprintSet.generate(args.fingerprints, seed=0)
    row: dict = dict(shape=shape, params=params, fingerprints=len(fps), weights_bytes=weights)

    def once(**extra):
        sync()
        result = hfp.inject(model, tokenizer, fps, verify_after=False, progress=False, **extra)
        sync()
        return result

    first = once()
    row["uncached_s"] = first.seconds
    row["uncached_peak_bytes"] = first.peak_memory_bytes
    started = time.perf_counter()
    report = hfp.verify(model, tokenizer, fps, ordinary_prompts=(), progress=False)
    row["verify_s"] = time.perf_counter() - started
    row["fsr"] = report.fsr
    row["trigger_keys"] = first.options.get("trigger_keys")
    row["edit_sweeps"] = first.options.get("edit_sweeps")
    first.revert()
    cached = []
    for _ in range(args.repeats):
        result = once()
        cached.append((result.seconds, result.peak_memory_bytes))
        result.revert()
    row["cached_s"] = [s for s, _ in cached]
    row["cached_peak_bytes"] = max(p for _, p in cached)
    last = []
    for _ in range(args.repeats):  # keys at the last prompt token: no trigger-key attempt first
        result = once(key_position="last")
        last.append(result.seconds)
        result.revert()
    row["cached_last_s"] = last
    eager = []
    for _ in range(args.repeats):  # the value steps run eagerly, as before they were replayed as a CUDA graph
        result = once(value_cuda_graph=False)
        eager.append(result.seconds)
        result.revert()
    row["cached_eager_s"] = eager
    if shape in args.profile_shapes:
        profile = cProfile.Profile()
        profile.enable()
        result = once()
        profile.disable()
        result.revert()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(40)
        (out / f"profile_{shape}.txt").write_text(text.getvalue())
    row["deltas"] = first.deltas
    del first, result, once
    model = None  # noqa: F841  (free the weights before emptying the cache)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def profile_step(model, tokenizer, data, deltas, fps, settings, config, out: Path) -> None:
    """One FSFT step (the third) under torch.profiler: where the time of the persisting setting goes."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from hf_fingerprint.fsft import FSFTConfig, FSFTTrainer

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])

    class Profiled(TrainerCallback):
        def on_step_begin(self, args, state, *_, **__):
            if state.global_step == 2:
                sync()
                self.profiler = profile(activities=activities)
                self.profiler.__enter__()

        def on_step_end(self, args, state, *_, **__):
            if hasattr(self, "profiler") and state.global_step == 3:
                sync()
                self.profiler.__exit__(None, None, None)

    timer = Profiled()
    trainer = FSFTTrainer(model, args=FSFTConfig(**{**settings, "max_steps": 4}, **config), train_dataset=data,
                          processing_class=tokenizer, callbacks=[timer], fingerprint_subspace=deltas,
                          fingerprints=fps)
    trainer.train()
    events = timer.profiler.key_averages()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    text = [events.table(sort_by=sort, row_limit=30), events.table(sort_by="cpu_time_total", row_limit=30)]
    (out / "fsft_profile.txt").write_text("\n\n".join(text))
    trainer.accelerator.free_memory()
    del trainer
    gc.collect()


def time_fsft(shape: str, tokenizer, device, deltas, args, out: Path) -> dict:
    """Seconds per optimizer step of SFTTrainer and the FSFT settings, interleaved step by step (``interleaved.py``).

    The trainers share one model (each has its own optimizer): at learning rate 1e-6 the weights barely move, and
    the memory is one model plus one optimizer state per trainer."""
    import hf_fingerprint as hfp

    fps = hfp.FingerprintSet.generate(args.fingerprints, seed=0)
    data = hfp.math_task(8 * args.fsft_accumulation * (args.fsft_steps + 1), seed=0)
    model = build(shape, tokenizer, device)
    with torch.no_grad():  # the injection's edit, so the subspace is the one a real run protects
        for delta in deltas:
            model.get_submodule(delta.module).weight += delta.dense().to(device, model.dtype)

    configs = {
        "SFTTrainer": None,
        "FSFT input (default)": dict(),
        "FSFT + anchor + replay (persisting)": PERSISTING,
        "FSFT + anchor + replay, separate pass": dict(PERSISTING, fsft_replay_pass="separate"),
        "FSFT + anchor + replay, 2 prompts": dict(PERSISTING, fsft_anchor_prompts=2),
    }
    configs = {name: config for name, config in configs.items() if name == "SFTTrainer" or not args.fsft_configs
               or any(word in name for word in args.fsft_configs)}
    settings = dict(output_dir=tempfile.mkdtemp(), max_steps=args.fsft_steps, learning_rate=1e-6,
                    per_device_train_batch_size=8, gradient_accumulation_steps=args.fsft_accumulation,
                    lr_scheduler_type="constant", logging_steps=10**6,
                    save_strategy="no", report_to="none", bf16=device.type == "cuda", use_cpu=device.type != "cuda",
                    seed=0, max_length=256, disable_tqdm=True, dataloader_num_workers=0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    all_times = interleaved_step_times(model, tokenizer, configs, settings=settings, data=data, deltas=deltas,
                                       fingerprints=fps)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    for name, times in all_times.items():
        print(f"  {name}: {[round(t, 3) for t in times]}", flush=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if args.fsft_profile:
        profile_step(model, tokenizer, data, deltas, fps, settings, PERSISTING, out)
    return dict(shape=shape, accumulation=args.fsft_accumulation, interleaved=True, peak_bytes=peak,
                rows=summarise(all_times, args.fsft_warmup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=["llama-3.2-3b", "qwen3-8b"], choices=list(SHAPES))
    parser.add_argument("--fsft-shape", default="llama-3.2-3b", choices=[*SHAPES, "none"])
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (SmolLM2's: BPE and a chat template)")
    parser.add_argument("--fingerprints", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fsft-steps", type=int, default=14)
    parser.add_argument("--fsft-warmup", type=int, default=2)
    parser.add_argument("--fsft-accumulation", type=int, default=1,
                        help="gradient accumulation steps of the FSFT timing (micro-batches of 8 per optimizer step)")
    parser.add_argument("--fsft-configs", nargs="*", default=[],
                        help="time only the FSFT settings whose names contain one of these words (SFTTrainer always)")
    parser.add_argument("--fsft-profile", action="store_true",
                        help="also run one step of the persisting FSFT setting under torch.profiler (fsft_profile.txt)")
    parser.add_argument("--profile-shapes", nargs="*", default=["llama-3.2-3b", "tiny"],
                        help="shapes whose injection is also run once under cProfile (profile_<shape>.txt)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if not (Path(args.tokenizer) / "tokenizer_config.json").is_file():
        parser.error(f"--tokenizer {args.tokenizer}: no tokenizer_config.json there (copy SmolLM2's tokenizer files "
                     "from the folder hf_fingerprint.load_model caches it in)")
    from transformers import AutoTokenizer

    import hf_fingerprint as hfp

    sys.path.insert(0, str(Path(__file__).parent))
    from injection import machine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_FINGERPRINT_CACHE", tempfile.mkdtemp())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    import transformers

    record: dict = dict(machine=machine(), torch=torch.__version__, transformers=transformers.__version__,
                        command="python benchmarks/paper_shapes.py " + " ".join(sys.argv[1:]), injection=[], fsft=None)

    def save():
        (out / "paper_shapes.json").write_text(json.dumps(record, indent=1, default=str))
        (out / "paper_shapes.md").write_text(markdown(record))

    deltas = {}

    def fsft():
        print(f"FSFT, {args.fsft_shape}", flush=True)
        try:
            if args.fsft_shape not in deltas:  # an edit of the usual shape, not timed
                model = build(args.fsft_shape, tokenizer, device)
                fps = hfp.FingerprintSet.generate(args.fingerprints, seed=0)
                deltas[args.fsft_shape] = hfp.inject(model, tokenizer, fps, key_position="last", verify_after=False,
                                                     progress=False).deltas
                del model
                gc.collect()
            record["fsft"] = time_fsft(args.fsft_shape, tokenizer, device, deltas[args.fsft_shape], args, out)
        except Exception:
            record["fsft"] = dict(shape=args.fsft_shape, error=traceback.format_exc()[-2000:])
            traceback.print_exc()
        save()

    for shape in args.shapes:  # FSFT right after its shape's injection: the smaller model first, the larger last
        print(f"injection, {shape}", flush=True)
        try:
            row = time_injection(shape, tokenizer, device, args, out)
            deltas[shape] = row.pop("deltas")
            record["injection"].append(row)
            print(json.dumps(row), flush=True)
        except Exception:  # the other parts still run and report
            record["injection"].append(dict(shape=shape, error=traceback.format_exc()[-2000:]))
            traceback.print_exc()
        save()
        if shape == args.fsft_shape:
            fsft()
    if args.fsft_shape not in ("none", *args.shapes):
        fsft()
    print(markdown(record))


def markdown(record: dict) -> str:
    gib = 2**30
    lines = [f"Paper shapes, random weights; {record['machine']}, torch {record['torch']}, transformers "
             f"{record['transformers']}. `{record['command']}`", "",
             "| shape | params | fingerprints | injection, statistics computed (s) | injection, cached (s) | "
             "cached, `key_position=\"last\"` (s) | cached, value steps eager (`value_cuda_graph=False`, s) | "
             "peak GPU memory (GiB; allocated before) | FSR (random weights) | trigger keys |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in record["injection"]:
        if "error" in row:
            lines.append(f"| {row['shape']} | error: {row['error'].splitlines()[-1]} |||||||||")
            continue
        lines.append(
            f"| {row['shape']} | {row['params'] / 1e9:.2f} B | {row['fingerprints']} | {row['uncached_s']:.1f} | "
            f"{' / '.join(f'{s:.1f}' for s in row['cached_s'])} | "
            f"{' / '.join(f'{s:.1f}' for s in row.get('cached_last_s', []))} | "
            f"{' / '.join(f'{s:.1f}' for s in row.get('cached_eager_s', []))} | {row['cached_peak_bytes'] / gib:.1f} "
            f"({row['weights_bytes'] / gib:.1f}) | {row['fsr']:.0%} | {row['trigger_keys']} |")
    fsft = record.get("fsft")
    if fsft:
        lines += ["", f"FSFT step time, {fsft['shape']}, full fine-tuning, batch 8 x {fsft.get('accumulation', 1)} "
                  "accumulation, bf16:", ""]
        if "error" in fsft:
            lines.append(f"error: {fsft['error'].splitlines()[-1]}")
        else:
            lines += ["Trainers interleaved step by step on one model (one optimizer each; each round in a random "
                      f"order); peak GPU memory of all together {fsft['peak_bytes'] / gib:.1f} GiB. Paired ratio: the "
                      "median over rounds of the step's time over the SFTTrainer step of the same round.", "",
                      "| trainer | s/step (median) | ratio to SFTTrainer | paired ratio | steps timed |",
                      "|---|---|---|---|---|"]
            lines += [f"| {r['config']} | {r['median_s']:.3f} | {r['ratio']:.3f}x | {r['paired_ratio']:.3f}x | "
                      f"{r['steps']} |" for r in fsft["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
