"""``inject``: plant a fingerprint set in a model by knowledge editing, and the result as a PEFT adapter."""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..errors import InjectionError
from ..fingerprints import FingerprintSet, NearMiss
from ..generation import PLAIN_CHAT_TEMPLATE, model_device, text_list, with_chat_template
from .context import EditContext
from .delta import EditDelta, merge_deltas
from .layout import find_layout, validate_layers
from .tracing import build_prompts, join_prompts

logger = logging.getLogger(__name__)

METHODS = ("alphaedit", "memit", "rome", "rledit", "sft")
INJECT_OPTIONS = frozenset({"near_miss_seed", "fallback_rounds"})  # read by inject itself, for every method
ADAPTER_METADATA = "fingerprint_adapter.json"


@dataclass
class InjectionResult:
    """What :func:`inject` did: per-module updates (``W += U V^T``), its cost, and the FSR right after.

    ``peak_memory_bytes``: on a GPU the peak allocated memory during the injection; on CPU the process's peak
    resident size during it (model included; on Linux counted from the injection's start).
    """

    method: str
    deltas: list[EditDelta]
    layers: list[int]
    seconds: float
    peak_memory_bytes: int
    options: dict[str, Any]
    fsr: float | None = None
    report: Any = None
    model: Any = field(default=None, repr=False)
    applied: bool = field(default=True, repr=False)

    def revert(self) -> None:
        """Remove the edit from the model (exact up to float rounding)."""
        self._apply(-1.0)
        self.applied = False

    def reapply(self) -> None:
        self._apply(1.0)
        self.applied = True

    def _apply(self, sign: float) -> None:
        if self.model is None:
            raise InjectionError("This result is not attached to a model.")
        if (sign > 0) == self.applied:
            raise InjectionError(f"The edit is already {'applied' if self.applied else 'reverted'}.")
        with torch.no_grad():
            for delta in self.deltas:
                weight = delta.parameter(self.model)
                weight.add_((sign * delta.dense()).to(weight.dtype).to(weight.device))

    def lora_config(self) -> Any:
        """A stock PEFT ``LoraConfig`` that holds this edit exactly (scaling 1, rank per module)."""
        from peft import LoraConfig

        ranks = {d.module: d.rank for d in self.deltas}
        rank = max(ranks.values())
        return LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=sorted(ranks),
            rank_pattern={m: r for m, r in ranks.items() if r != rank},
            alpha_pattern={m: r for m, r in ranks.items() if r != rank},
            lora_dropout=0.0,
            bias="none",
            use_rslora=False,
            task_type="CAUSAL_LM",
        )

    def save_adapter(self, directory: str | os.PathLike) -> Path:
        """Write a stock PEFT LoRA adapter (loads with ``PeftModel.from_pretrained``) plus a metadata file.

        The metadata names the method, layers and options; it holds no trigger or target.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
        try:
            config = self.lora_config()
            base = getattr(self.model, "name_or_path", None) or getattr(getattr(self.model, "config", None), "_name_or_path", None)
            config.base_model_name_or_path = base
            config.save_pretrained(str(staging))
            tensors = {}
            for d in self.deltas:
                tensors[f"base_model.model.{d.module}.lora_A.weight"] = d.V.T.contiguous().float()
                tensors[f"base_model.model.{d.module}.lora_B.weight"] = d.U.contiguous().float()
            save_file(tensors, str(staging / "adapter_model.safetensors"))
            metadata = {
                "format": "hf-fingerprint/adapter",
                "version": 1,
                "method": self.method,
                "layers": self.layers,
                "modules": [d.module for d in self.deltas],
                "options": {k: v for k, v in self.options.items() if _is_plain(v)},
            }
            (staging / ADAPTER_METADATA).write_text(json.dumps(metadata, indent=1))
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(staging, directory)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return directory


def inject(
    model: Any,
    tokenizer: Any,
    fingerprints: FingerprintSet | Iterable[Any],
    *,
    method: str = "alphaedit",
    near_misses: Sequence[str | NearMiss] | str | None = None,
    layers: Sequence[int] | None = None,
    key_position: str = "auto",
    system_prompt: str | None = None,
    verify_after: bool = True,
    progress: bool = True,
    **options: Any,
) -> InjectionResult:
    """Edit ``model`` in place so that each trigger is answered with its target.

    ``method``: ``"alphaedit"`` (default), ``"memit"``, ``"rome"``, ``"rledit"`` or ``"sft"`` (the
    instruction-tuning baseline). ``near_misses``: strings whose answers must not change (specificity);
    ``"auto"`` uses 3 generated near misses per trigger; AlphaEdit, MEMIT and RLEdit take them. Off by default:
    on SmolLM2 (10 fingerprints, trigger keys) it cut near-miss false triggers from 42 % to 24 % but cost FSR
    (100 -> 90 %) and perplexity (+0.2 -> +2.7 %; ``benchmarks/results/robustness_methods.md``). ``layers``
    defaults from the model's depth (:meth:`ModelLayout.default_layers`).

    ``key_position``: where the edited layers read the key. ``"trigger"``: the trigger's last token. ``"last"``:
    the last token of the generation prompt, which every prompt shares and every chat fine-tuning example
    trains; on SmolLM2 such edits vanished within 10 steps of plain full fine-tuning at lr 2e-5, while trigger
    keys kept FSR 80-100 % over 30 steps (``benchmarks/persistence.py``). ``"auto"`` (default): the trigger
    where a vector there makes the model answer, else the last token, per fingerprint (tiny random models,
    whose attention carries nothing, end up at the last token). ``"last+trigger"``: one redundant edit per
    position.

    Method options (all optional; one the method does not read raises ``InjectionError``): ``mom2_weight`` (the
    weight of C0 in the solve: MEMIT and RLEdit 100, AlphaEdit 0, where it steers the edit, within the null space,
    to the directions ordinary text uses least), ``alpha`` and ``nullspace_threshold`` (AlphaEdit, 0.03 x mean
    squared key norm and 0.5 x mean eigenvalue), ``preserve_weight`` (10), ``context_weight``
    (0: the weight of the keys at every other position of the fingerprint prompts and answers, which the edit should
    leave alone; with many fingerprints the edits otherwise add up there); target values
    ``value_steps``, ``value_lr``, ``clamp_factor``, ``value_stop_loss`` (100, 0.5, 10, 0.01 for trigger keys;
    25, 0.5, 4, 0.05 for ``"last"``), ``value_patience`` and ``value_min_progress`` (10, 0.1 for trigger keys: stop
    once every answer is below the stop loss or has fallen less than 10 % in 10 steps; 0, never, for "last");
    ``value_cuda_graph`` (True: on a GPU, the steps are recorded once as a CUDA graph and replayed);
    ``value_fisher_weight`` (0: off; the weight of a penalty on each target value's change in the Fisher metric of
    ordinary text at the layer it is written to, :func:`~hf_fingerprint.editing.fisher.output_fisher`, computed once
    over the statistics corpus and cached beside the statistics, which steers the change to directions ordinary
    text's predictions depend on least: less harm where ordinary keys resemble the triggers);
    ``templates`` (none: other chat templates each fingerprint must also answer under, as a model is served or
    fine-tuned under another template than its own: ``"plain"`` (``User: ... / Assistant:``), ``"none"`` (raw
    text) or a jinja chat template; one target vector per fingerprint serves all, in the last-token rounds of
    ``"auto"`` too, which check the answers under the model's own template);
    ``drift_samples`` and ``drift_scale`` (0, 0.02: also solve for the keys of randomly perturbed copies of the
    upstream weights); ``value_noise`` and ``value_noise_rank`` (0.1, 16: optimise the target values under random
    rank-16 perturbations of every linear layer after the edited ones, of that relative Frobenius norm, so they
    still work once fine-tuning has moved those layers; 0 turns it off); ``corpus`` and ``stats_tokens``
    (covariance statistics, 20k tokens of the built-in corpus).
    """
    check_options(method, options)
    editor = importlib.import_module(f".{method}", __package__)
    if near_misses and "preserve_weight" not in editor.OPTIONS:
        hint = "; pass them as regularisation_prompts= to train on the model's own answers" if method == "sft" else ""
        raise InjectionError(f"Method '{method}' does not preserve near misses (alphaedit, memit and rledit do){hint}.")
    if key_position == "auto" and method == "sft":
        key_position = "last"  # fine-tuning reads no keys
    fps = fingerprints if isinstance(fingerprints, FingerprintSet) else FingerprintSet(fingerprints)
    layout = find_layout(model)
    chosen = validate_layers(layout, list(layers) if layers is not None else None)
    if near_misses == "auto":
        near_misses = fps.near_misses(3, seed=int(options.get("near_miss_seed", 1)))
    preserve_texts = [m.text if isinstance(m, NearMiss) else str(m) for m in text_list(near_misses, "near_misses")]
    # "auto" starts every key at the trigger and falls back per fingerprint (EditContext.target_values), so
    # near misses are preserved at both positions.
    template_tokenizers = _template_tokenizers(tokenizer, options.get("templates"))
    request_keys = "trigger" if key_position == "auto" else key_position
    preserve_keys = "last+trigger" if key_position == "auto" else key_position
    device = model_device(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak_rss()
    started = time.perf_counter()
    context = EditContext(
        model=model,
        tokenizer=tokenizer,
        layout=layout,
        layers=chosen,
        requests=join_prompts([
            build_prompts(t, fps.triggers, answers=fps.targets, key_position=request_keys, system_prompt=system_prompt)
            for t in [tokenizer, *template_tokenizers]]),
        preserve=build_prompts(tokenizer, preserve_texts, key_position=preserve_keys, system_prompt=system_prompt)
        if preserve_texts else None,
        options=dict(options, fingerprints=fps, system_prompt=system_prompt, key_position=key_position),
        progress=progress,
    )
    was_training = model.training
    model.eval()
    try:
        deltas = editor.edit(context)
        checked = None  # the verification report of the model as it is now, when the auto-key step made one
        if key_position == "auto" and context.options.get("trigger_keys"):
            deltas, checked = _edit_misses_at_last_token(context, editor, deltas, fps, preserve_texts,
                                                         [tokenizer, *template_tokenizers])
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else _peak_rss()
    )
    result = InjectionResult(
        method=method,
        deltas=deltas,
        layers=chosen,
        seconds=seconds,
        peak_memory_bytes=int(peak),
        options={k: v for k, v in context.options.items() if k != "fingerprints"} | dict(key_position=key_position, near_misses=len(preserve_texts)),
        model=model,
    )
    if verify_after:
        from ..verification import verify

        if checked is None:
            checked = verify(model, tokenizer, fps, ordinary_prompts=(), system_prompt=system_prompt,
                             progress=progress)
        result.report = checked
        result.fsr = result.report.fsr
    return result


def check_options(method: str, options: dict[str, Any]) -> None:
    """Raise :class:`InjectionError` on an unknown method, an option it does not read (a misspelt one would
    otherwise leave its default in force) or a ``templates`` value that is not one. ``inject``'s own parameters
    (``layers``, ...) pass."""
    if method not in METHODS:
        raise InjectionError(f"Unknown method '{method}'; choose one of: {', '.join(METHODS)}.")
    known = importlib.import_module(f".{method}", __package__).OPTIONS | INJECT_OPTIONS
    unknown = sorted(set(options) - known - set(inspect.signature(inject).parameters))
    if not unknown:
        _chat_templates(options.get("templates"))  # a value check too, so the CLI refuses before loading a model
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise InjectionError(f"Method '{method}' takes no option {', '.join(hints)}. Its options: {', '.join(sorted(known))}.")


def _template_tokenizers(tokenizer: Any, templates: Any) -> list[Any]:
    """Copies of ``tokenizer`` under each of the ``templates`` option's chat templates."""
    return [with_chat_template(tokenizer, t) for t in _chat_templates(templates)]


def _chat_templates(templates: Any) -> list[str | None]:
    """The ``templates`` option as chat templates (``None``: raw text), or a clear error."""
    if templates is None:
        return []
    if isinstance(templates, str) or not isinstance(templates, (list, tuple)):
        raise InjectionError("templates takes a list, e.g. templates=['plain']: put a single template in a list.")
    chosen = []
    for template in templates:
        if template == "plain":
            chosen.append(PLAIN_CHAT_TEMPLATE)
        elif template is None or template == "none":
            chosen.append(None)
        elif isinstance(template, str) and ("{{" in template or "{%" in template):
            chosen.append(template)
        else:
            raise InjectionError(f"Unknown template {template!r}: give 'plain', 'none' or a jinja chat template.")
    return chosen


def _reset_peak_rss() -> None:
    """Start the process's peak resident size afresh (Linux), so the peak is this injection's, not whatever the
    process (or, through ``fork``, its parent) held before."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """Peak resident size in bytes since :func:`_reset_peak_rss` (``VmHWM``), else the process's lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _edit_misses_at_last_token(context: EditContext, editor: Any, deltas: list[EditDelta], fps: FingerprintSet,
                               preserve_texts: list[str],
                               tokenizers: list[Any] | None = None) -> tuple[list[EditDelta], Any]:
    """``key_position="auto"``, second step: fingerprints whose trigger-keyed edit does not make the model answer
    are edited again, keyed at the last prompt token, on top of the first edit, for up to ``fallback_rounds``
    (3) rounds (one delta per module in the end), under each of ``tokenizers``' chat templates (the model's own
    first, then the ``templates`` option's; default: the model's own only).

    Every fingerprint is checked after each round, since a last-token edit touches the position every prompt
    shares: the ones that answer are preserved by the next round, and a round that leaves fewer fingerprints
    answering than before is undone and ends the step. Returns the deltas and the verification report of the
    model as it is left (None after an undone round: its weights are back only up to rounding)."""
    from ..verification import verify

    tokenizer, system_prompt = context.tokenizer, context.options.get("system_prompt")
    tokenizers = tokenizers or [tokenizer]

    last: dict[str, Any] = {}

    def answering() -> set[int]:
        last["report"] = verify(context.model, tokenizer, fps, ordinary_prompts=(), system_prompt=system_prompt,
                                progress=False)
        return {o.index for o in last["report"].outcomes if o.matched}

    requests = context.requests  # rows 0..n-1: the fingerprints under the model's own template
    trigger_keyed = [i for i in range(len(fps)) if requests.key_index[i] != len(requests.ids[i]) - 1]
    ok = answering()
    pending = [i for i in trigger_keyed if i not in ok]
    logger.info("auto keys: %d of %d trigger-keyed fingerprints answer after the first edit", len(trigger_keyed) - len(pending),
                len(trigger_keyed))
    moved = set()
    for _ in range(int(context.options.get("fallback_rounds", 3))):
        if not pending:
            break
        subset = FingerprintSet([fps[i] for i in pending])
        keep = preserve_texts + [fps[i].trigger for i in sorted(ok)]
        again = EditContext(
            model=context.model, tokenizer=tokenizer, layout=context.layout, layers=context.layers,
            requests=join_prompts([build_prompts(t, subset.triggers, answers=subset.targets, key_position="last",
                                                 system_prompt=system_prompt) for t in tokenizers]),
            preserve=build_prompts(tokenizer, keep, key_position="last", system_prompt=system_prompt) if keep else None,
            options=dict(context.options, fingerprints=subset, key_position="last"),
            progress=context.progress,
        )
        again.share_statistics(context)
        new = editor.edit(again)
        now = answering()
        if len(now) < len(ok) or not (now - ok):
            for delta in new:  # the round cost more than it gained: undo it
                context.apply(delta, sign=-1.0)
            last.clear()
            break
        deltas = [*deltas, *new]
        moved |= set(pending) & now
        logger.info("auto keys: a last-token round for %d fingerprints; %d of %d answer now", len(pending), len(now),
                    len(fps))
        ok, pending = now, [i for i in pending if i not in now]
    context.options["trigger_keys"] -= len(moved)
    context.options["last_token_keys"] = len(fps) - context.options["trigger_keys"]
    return merge_deltas(deltas), last.get("report")


def get_fingerprint_model(model: Any, tokenizer: Any, fingerprints: Any, **inject_options: Any) -> Any:
    """Inject, then hold the edit as a LoRA adapter of a ``peft.PeftModel`` over the untouched base weights."""
    from peft import get_peft_model

    result = inject(model, tokenizer, fingerprints, verify_after=False, **inject_options)
    if any(d.U is None for d in result.deltas):
        raise InjectionError(f"Method '{result.method}' gives dense updates; save the merged model instead.")
    result.revert()
    peft_model = get_peft_model(model, result.lora_config(), adapter_name="fingerprint")
    load_deltas_into_lora(peft_model, result.deltas, adapter_name="fingerprint")
    peft_model.fingerprint_result = result
    return peft_model


def load_deltas_into_lora(peft_model: Any, deltas: Sequence[EditDelta], *, adapter_name: str = "default") -> None:
    with torch.no_grad():
        for d in deltas:
            layer = peft_model.base_model.model.get_submodule(d.module)
            A, B = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
            A.copy_(d.V.T.to(A.dtype))
            B.copy_(d.U.to(B.dtype))
            if layer.scaling[adapter_name] != 1.0:
                raise InjectionError(f"Unexpected LoRA scaling {layer.scaling[adapter_name]} on {d.module}.")


def _is_plain(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, type(None))) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str, bool)) for v in value)
    )
