"""Robustness table: injections on SmolLM2-135M-Instruct, each evaluated along every dimension, in one run.

For each ``--method`` (``METHOD[:KEY=VALUE,...]``, repeatable; default: the default injection) a fresh copy of
the embedded model gets the same fingerprints with ``hf_fingerprint.inject``, then ``hf_fingerprint.evaluate``
runs against the unmodified model: effectiveness, harmlessness (perplexity, agreement, math accuracy),
robustness (int8, 4-bit, pruning, merges, deployment settings), false triggers (the near-miss study), the
suppression attacks, efficiency and, with ``--persistence``, plain SFT and FSFT fine-tuning runs. With several
methods a side-by-side table of the five dimensions comes first. Each method runs in a child process,
``--jobs`` at once (one torch thread each when several share the CPU). Writes benchmarks/results/<name>.md and
.json, rewritten as each method finishes; every figure in them comes from this one run.

    python benchmarks/robustness.py --math-n 0
    python benchmarks/robustness.py --jobs 2 --persistence --name robustness_methods --method alphaedit \\
        --method alphaedit:near_misses=auto --method memit --method rome --method rledit --method sft
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from injection import RESULTS, machine, parse_options, parse_value

SPARSITIES = (0.1, 0.2, 0.3)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _signed(value) -> str:
    return "-" if value is None else f"{100 * value:+.1f} %"


def comparison(reports: dict) -> str:
    """The five dimensions side by side, one row per injection (what each column means: the sections below)."""
    persistence = list(dict.fromkeys(k for r in reports.values() for k in (r["persistence"] or {})))
    math = any("math_accuracy" in (r["harmlessness"] or {}) for r in reports.values())
    head = ("| injection | FSR | perplexity change | token agreement / KL " + ("| math (base) " if math else "")
            + "| int8 | 4-bit g32 / g64 | pruning 10 / 20 / 30 % | merge linear / TIES / DARE | system prompt "
            "| near misses (>= 20 %) | suppression (base ref.) "
            + (f"| persistence: {' / '.join(persistence)} " if persistence else "")
            + "| injection time / peak memory |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, r in reports.items():
        e, h, rob, f = r["effectiveness"], r["harmlessness"] or {}, r["robustness"] or {}, r["false_triggers"] or {}
        attack = (r["attacks"] or {}).get("detect, base as reference") or {}
        pruning = " / ".join(_pct(rob.get(f"magnitude pruning {100 * s:.0f} %")) for s in SPARSITIES)
        kept = " / ".join(_pct((r["persistence"] or {}).get(k)) for k in persistence)
        rows.append(
            f"| {label} | {_pct(e['fsr'])} | {_signed(h.get('perplexity_change'))} "
            f"| {_pct(h.get('token_agreement'))} / {h.get('mean_kl', float('nan')):.3f} "
            + (f"| {_pct(h.get('math_accuracy'))} ({_pct(h.get('base_math_accuracy'))}) " if math else "")
            + f"| {_pct(rob.get('int8 (per channel)'))} "
            f"| {_pct(rob.get('4-bit RTN (group 32)'))} / {_pct(rob.get('4-bit RTN (group 64)'))} "
            f"| {pruning} "
            f"| {_pct(rob.get('linear merge (0.5)'))} / {_pct(rob.get('TIES merge (density 0.2)'))} / "
            f"{_pct(rob.get('DARE merge (density 0.5)'))} "
            f"| {_pct(rob.get('system prompt (generic)'))} "
            f"| {_pct(f.get('near_miss_rate'))} ({_pct(f.get('near_miss_rate_at_20pct'))}) "
            f"| {_pct(attack.get('fsr_before'))} -> {_pct(attack.get('fsr_after'))} "
            + (f"| {kept} " if persistence else "")
            + f"| {r['efficiency']['seconds']:.0f} s / {r['efficiency']['peak_memory_bytes'] / 2**30:.2f} GiB |"
        )
    return "\n".join(rows)


class _Finished:
    """A method whose result a resumed run found in the work folder."""

    returncode = 0

    def poll(self) -> int:
        return 0


class _Adopted:
    """A child still running from an interrupted run: done when its process exits."""

    def __init__(self, pid: int, out: Path):
        self.pid, self.out, self.returncode = pid, out, None

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
            return None
        except OSError:
            self.returncode = 0 if self.out.exists() else 1
            return self.returncode


def _alive(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process still runs."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def run_child(spec: dict) -> None:
    """One injection and its evaluation (in a child process); writes ``{"report", "markdown"}`` to spec["out"]."""
    import torch

    import hf_fingerprint as hfp
    from hf_fingerprint.evaluation import evaluate
    from hf_fingerprint.evaluation.harmlessness import held_out_texts

    torch.set_num_threads(spec["threads"])
    fps = hfp.FingerprintSet.generate(spec["fingerprints"], seed=spec["seed"])
    model, tokenizer = hfp.load_model("smollm2-135m-instruct")
    # Injected before the other models load: on CPU its peak memory is the process's peak resident size.
    result = hfp.inject(model, tokenizer, fps, method=spec["method"], verify_after=False, **spec["options"])
    base = hfp.load_model("smollm2-135m-instruct")[0]
    other = hfp.load_model(spec["other"])[0] if spec["other"] else None
    report = evaluate(model, tokenizer, fps, base=base, injection=result, dimensions=spec["dimensions"],
                      math_n=spec["math_n"], attack_math=False, texts=held_out_texts(spec["texts"]),
                      merge_with=other, sparsities=SPARSITIES, persistence_steps=spec["persistence_steps"],
                      persistence_options={"bf16": True})
    Path(spec["out"]).write_text(json.dumps({"report": report.to_dict(), "markdown": report.to_markdown()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", action="append", default=None, metavar="METHOD[:K=V,...]",
                        help="an injection to evaluate (repeatable; default: alphaedit with default options)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an inject() option for every method (JSON value)")
    parser.add_argument("-n", "--fingerprints", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--math-n", type=int, default=50, help="math problems for the utility score (0 skips it)")
    parser.add_argument("--texts", type=int, default=300, help="held-out paragraphs for every perplexity")
    parser.add_argument("--merge-steps", type=int, default=20, help="steps of the other fine-tune of the base that "
                        "every injection is merged with (full fine-tuning on the instruction task, lr 1e-4; 0: no merges)")
    parser.add_argument("--persistence", action="store_true", help="add the fine-tuning runs of "
                        "hf_fingerprint.evaluation.PERSISTENCE_RUNS, plain SFT and FSFT (minutes each)")
    parser.add_argument("--persistence-steps", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=1, help="methods evaluated at once (one process each)")
    parser.add_argument("--name", default="robustness")
    parser.add_argument("--work", default=None, help="folder for the children's results and logs; give the folder "
                        "of an interrupted run to resume it (finished methods with the same settings are reused, "
                        "running ones awaited)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(json.loads(args.child))
        return
    shared = {key: parse_value(value) for key, _, value in (pair.partition("=") for pair in args.option)}
    injections = []
    for spec in args.method or ["alphaedit"]:
        method, _, text = spec.partition(":")
        injections.append((spec, method, {**shared, **parse_options(text)}))

    import torch

    import hf_fingerprint as hfp
    from hf_fingerprint.evaluation import DEFAULT_DIMENSIONS, PERSISTENCE_RUNS

    jobs = max(1, min(args.jobs, len(injections)))
    threads = max(1, torch.get_num_threads() // jobs)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hf-fingerprint-robustness-"))
    work.mkdir(parents=True, exist_ok=True)
    other = None
    if args.merge_steps > 0 and (work / "other" / "config.json").exists():
        other = str(work / "other")  # a resumed run merges with the same fine-tune
    elif args.merge_steps > 0:  # someone else's fine-tune of the same base, for the merges: made once, shared
        from hf_fingerprint.evaluation import finetune

        base, tokenizer = hfp.load_model("smollm2-135m-instruct")
        finetuned = finetune(base, tokenizer, "instruction", steps=args.merge_steps, lr=1e-4, seed=args.seed + 1)
        other = str(work / "other")
        finetuned.save_pretrained(other)
        tokenizer.save_pretrained(other)
        del base, finetuned
    dimensions = list(DEFAULT_DIMENSIONS) + (["persistence"] if args.persistence else [])
    runs = ", ".join(f"{r.name} on {r.task}" for r in PERSISTENCE_RUNS)
    title = f"`{injections[0][0]}`" if len(injections) == 1 else "several injections"
    header = (
        f"# Robustness of {title} fingerprints on SmolLM2-135M-Instruct\n\n"
        f"{datetime.date.today()}, {machine().rsplit(', torch threads', 1)[0]}, {jobs} method(s) at once with "
        f"{threads} torch thread(s) each (wall times are under that load); {args.fingerprints} fingerprints "
        f"(seed {args.seed}), {args.texts} held-out paragraphs for perplexity, {args.math_n} math problems; merges "
        f"with a {args.merge_steps}-step full fine-tune of the base on the instruction task (lr 1e-4)"
        + (f"; persistence: {args.persistence_steps} steps of batch 8 ({runs}; plain SFTTrainer, and FSFTTrainer "
           f"with penalty 100 + key anchor 100 + answer replay 1; bf16 autocast)" if args.persistence else "")
        + f"; one run. Reproduce: `python benchmarks/robustness.py {' '.join(sys.argv[1:])}`\n\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    done: dict[int, dict] = {}
    pending = []
    running: dict[int, tuple[object, Path, object]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for index, (spec, method, options) in enumerate(injections):
        child = dict(method=method, options=options, fingerprints=args.fingerprints, seed=args.seed,
                     math_n=args.math_n, texts=args.texts, other=other, dimensions=dimensions,
                     persistence_steps=args.persistence_steps)
        spec_path, out = work / f"{index}.spec.json", work / f"{index}.json"
        same = spec_path.exists() and json.loads(spec_path.read_text()) == child
        pid = _alive(work / f"{index}.pid") if same else None
        if same and out.exists():
            running[index] = (_Finished(), work / f"{index}.log", None)
            print(f"== {spec}: reusing the finished result in {work}", flush=True)
        elif pid is not None:
            running[index] = (_Adopted(pid, out), work / f"{index}.log", None)
            print(f"== {spec}: waiting for its running process {pid}", flush=True)
        else:
            spec_path.write_text(json.dumps(child))
            pending.append((index, child))
    if len(pending) < len(injections):
        header = header.replace("; one run.", f"; one run, resumed once ({len(injections) - len(pending)} of "
                                f"{len(injections)} methods measured before the resumption, same settings).", 1)
    while pending or running:
        while pending and sum(not isinstance(p, _Finished) for p, _, _ in running.values()) < jobs:
            index, child = pending.pop(0)
            log = open(work / f"{index}.log", "w")
            proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(
                {**child, "threads": threads, "out": str(work / f"{index}.json")})], stdout=log,
                stderr=subprocess.STDOUT, env=env)
            (work / f"{index}.pid").write_text(str(proc.pid))
            running[index] = (proc, work / f"{index}.log", log)
            print(f"== {injections[index][0]}: started (log {work / f'{index}.log'})", flush=True)
        if not any(isinstance(p, _Finished) for p, _, _ in running.values()):
            time.sleep(5)
        for index, (proc, log_path, log) in list(running.items()):
            if proc.poll() is None:
                continue
            if log is not None:
                log.close()
            del running[index]
            spec = injections[index][0]
            out = work / f"{index}.json"
            if proc.returncode != 0 or not out.exists():
                print(f"== {spec}: FAILED (exit {proc.returncode}); last lines of its log:\n"
                      + "\n".join(log_path.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
                continue
            done[index] = json.loads(out.read_text())
            print(f"== {spec}: done", flush=True)
            ordered = [(injections[i][0], done[i]) for i in sorted(done)]
            sections = [d["markdown"].replace("## Evaluation", f"## `{s}`: evaluation", 1) if len(injections) > 1
                        else d["markdown"] for s, d in ordered]
            reports = {s: d["report"] for s, d in ordered}
            summary = (comparison(reports) + "\n\n") if len(injections) > 1 else ""
            markdown = header + summary + "\n\n".join(sections) + "\n"
            (RESULTS / f"{args.name}.md").write_text(markdown)
            document = reports[spec] if len(injections) == 1 else reports
            (RESULTS / f"{args.name}.json").write_text(json.dumps(document, ensure_ascii=False, indent=1))
    print((RESULTS / f"{args.name}.md").read_text() if done else "nothing finished", flush=True)
    if len(done) < len(injections):
        sys.exit(f"{len(injections) - len(done)} method(s) failed; their logs are in {work}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
