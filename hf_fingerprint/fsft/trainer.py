"""FSFTTrainer: TRL's SFTTrainer plus a penalty that keeps fine-tuning off the fingerprint subspace.

Switching from SFTTrainer takes two names and one argument::

    trainer = FSFTTrainer(model, args=FSFTConfig(...), train_dataset=ds, fingerprint_subspace=injection_result)

For each edited matrix (edit dWfp = U S V^T, drift D = W - We) the trainer only ever computes ``D V_r``
(``out x r``), from ``W V_r`` and the stored reference ``We V_r``: memory and time are proportional to the edited
matrices times the protected rank, and no copy of any weight is kept.
"""

from __future__ import annotations

import os

import dataclasses
import textwrap
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import TrainingArguments
from trl import SFTTrainer

from ..errors import SubspaceError
from .anchor import KeyAnchor
from .replay import AnswerReplay, JointReplay
from .config import FSFTConfig
from .subspace import FingerprintSubspace, ModuleSubspace, _find_module

__all__ = ["FSFTTrainer"]


@dataclass
class _LoraFactor:
    A: nn.Parameter  # r_lora x in
    B: nn.Parameter  # out x r_lora
    scaling: float


@dataclass
class _Protected:
    """One edited matrix as the trainer sees it: trainable tensors, subspace factors, reference."""

    name: str
    U: torch.Tensor  # out x k, fp32, on the parameter's device
    S: torch.Tensor  # k
    V: torch.Tensor  # in x k
    energy: float  # sum(S**2) of the kept directions: the normaliser of F
    weight: nn.Parameter | None = None  # full fine-tuning: the trainable weight
    reference: torch.Tensor | None = None  # full fine-tuning: We @ V
    lora: list[_LoraFactor] = field(default_factory=list)  # LoRA: the trainable factors
    offset: torch.Tensor | None = None  # LoRA: (W_base - We) @ V, constant; None when zero

    def drift(self) -> torch.Tensor:
        """``D V`` (out x k, float32): the drift seen by the fingerprint's input directions."""
        if self.weight is not None:
            return self.weight.float() @ _replicated(self.V, self.weight) - self.reference
        total = None
        for factor in self.lora:
            term = factor.scaling * (factor.B.float() @ (factor.A.float() @ _replicated(self.V, factor.A)))
            total = term if total is None else total + term
        return total if self.offset is None else total + self.offset

    def penalty(self, variant: str) -> torch.Tensor:
        """``F`` of METHOD.md section 5 for ``variant``, divided by the kept energy of the edit."""
        drift = self.drift()
        if variant in ("input", "project"):
            value = (drift**2).sum()
        elif variant == "two_sided":
            value = ((_replicated(self.U, drift).T @ drift) ** 2).sum()
        else:  # direction: <D, dWfp> = sum_j S_j <D V_j, U_j>
            inner = ((drift * _replicated(self.U, drift)).sum(0) * _replicated(self.S, drift)).sum()
            value = inner**2 / self.energy
        value = value / self.energy
        return value.full_tensor() if _is_dtensor(value) else value

    @torch.no_grad()
    def project_gradients(self) -> None:
        """Remove ``G V V^T`` from the gradient of every trainable tensor whose input side is V's space."""
        for param in self._input_side_params():
            if param.grad is not None:
                grad = param.grad
                v = _replicated(self.V, grad)
                grad.sub_(((grad.float() @ v) @ v.T).to(grad.dtype))

    @torch.no_grad()
    def project_weights(self) -> None:
        """Re-project after an optimizer step: ``W -= (W V - We V) V^T`` (full), ``A -= (A V) V^T`` (LoRA)."""
        if self.weight is not None:
            v = _replicated(self.V, self.weight)
            self.weight.sub_(((self.weight.float() @ v - self.reference) @ v.T).to(self.weight.dtype))
        for factor in self.lora:
            v = _replicated(self.V, factor.A)
            factor.A.sub_(((factor.A.float() @ v) @ v.T).to(factor.A.dtype))

    def _input_side_params(self) -> list[nn.Parameter]:
        return [self.weight] if self.weight is not None else [f.A for f in self.lora]


class FSFTTrainer(SFTTrainer):
    """[`trl.SFTTrainer`] with Fingerprint Subspace-aware Fine-Tuning (arXiv 2509.03122).

    Takes every argument of SFTTrainer plus ``fingerprint_subspace``: a [`FingerprintSubspace`], an injection
    result (anything with ``.deltas``), a fingerprint adapter folder, or a ``(base_model, fingerprinted_model)``
    pair. The training loss becomes ``task loss + fsft_lambda * mean_i F_i`` (see [`FSFTConfig`]); the
    ``"project"`` variant instead constrains the gradient and the weights. Evaluation losses stay the plain task
    loss, comparable with SFTTrainer's. The logged ``fsft_penalty`` is ``mean_i F_i`` before the weight lambda
    (for ``"project"``, the ``"input"`` measure, which should stay ~0).

    ``fingerprints`` (the owner's [`FingerprintSet`], optional) enables the key anchor
    (``fsft_anchor_lambda > 0``, see [`FSFTConfig`] and ``hf_fingerprint.fsft.anchor``): it also protects the
    keys the edited matrices read, which plain fine-tuning moves through the upstream layers, and the answer
    replay (``fsft_replay_lambda > 0``, ``hf_fingerprint.fsft.replay``), which trains on a few fingerprint pairs
    per step and so protects the layers after the edit too. Their values are logged as ``fsft_anchor`` and
    ``fsft_replay``; the triggers and targets themselves are never logged.

    The reference ``We`` is the model's own weights at the first ``compute_loss`` unless the subspace carries
    one (``from_pair`` or ``.with_reference(model)``); carry one when resuming from a checkpoint. Works for full
    fine-tuning and with ``peft_config`` (LoRA on the edited modules), under DDP and FSDP2; not under DeepSpeed
    ZeRO-3, which hides parameters outside the forward pass.
    """

    _tag_names = ["trl", "sft", "fsft", "hf_fingerprint"]
    _name = "FSFT"
    _paper = {
        "title": "From Evaluation to Defense: Constructing Persistent Edit-Based Fingerprints for LLMs",
        "id": "2509.03122",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @misc{li2025editfingerprints,
                title        = {{From Evaluation to Defense: Constructing Persistent Edit-Based Fingerprints for LLMs}},
                author       = {Yue Li and Xin Yi and Dongsheng Shi and Yongyi Cui and Gerard de Melo and Xiaoling Wang and Linlin Wang},
                year         = 2025,
                eprint       = {2509.03122},
                archivePrefix = {arXiv},
                primaryClass = {cs.CR},
                note         = {Version 1; later versions are retitled},
            }"""),
    }

    def __init__(
        self,
        model: Any,
        args: FSFTConfig | TrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        compute_loss_func: Any = None,
        compute_metrics: Any = None,
        callbacks: Any = None,
        optimizers: tuple[Any, Any] = (None, None),
        optimizer_cls_and_kwargs: Any = None,
        preprocess_logits_for_metrics: Any = None,
        quantization_config: Any = None,
        peft_config: Any = None,
        formatting_func: Any = None,
        *,
        fingerprint_subspace: Any,
        fingerprints: Any = None,
    ) -> None:
        args = _as_fsft_config(args, model)
        _refuse_zero3()
        self._fsft_triggers, self._fsft_targets = _pairs(fingerprints) if fingerprints is not None else (None, None)
        if args.fsft_anchor_lambda > 0 and not self._fsft_triggers:
            raise ValueError(
                "fsft_anchor_lambda > 0 needs the fingerprints whose keys it anchors: pass "
                "FSFTTrainer(..., fingerprints=fingerprint_set), or set fsft_anchor_lambda=0."
            )
        if args.fsft_replay_lambda > 0 and not (self._fsft_targets and all(self._fsft_targets)):
            raise ValueError(
                "fsft_replay_lambda > 0 needs the fingerprint pairs it replays, targets included: pass "
                "FSFTTrainer(..., fingerprints=fingerprint_set) (or (trigger, target) pairs), or set "
                "fsft_replay_lambda=0."
            )
        self._fsft_anchor: KeyAnchor | None = None
        self._fsft_replay: AnswerReplay | None = None
        self._fsft_joint: JointReplay | None = None
        self._fsft_joint_failed = False
        self._fsft_last_step = -1
        subspace = FingerprintSubspace.build(fingerprint_subspace)
        self.fingerprint_subspace = subspace.truncated(rank=args.fsft_rank, energy=args.fsft_energy)
        self._fsft_protected: list[_Protected] | None = None
        self._fsft_hooks: list[Any] = []
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=quantization_config,
            peft_config=peft_config,
            formatting_func=formatting_func,
        )
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3:
            raise ValueError(_ZERO3_MESSAGE)
        if self.args.fsft_anchor_lambda > 0 and self.is_fsdp_enabled:
            raise ValueError(
                "The FSFT key anchor stops its forward pass after the deepest edited layer, which FSDP does not "
                "allow; under FSDP use fsft_anchor_lambda=0 (the subspace penalty works there)."
            )
        # Fail early on a subspace that does not fit the model (the reference itself is taken at the first step).
        for name, sub in self.fingerprint_subspace.items():
            _check_module(_find_module(self.model, name), name, sub)

    # ----- the penalty -----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        unwrapped = self.accelerator.unwrap_model(model)
        if self._fsft_protected is None:
            self._fsft_protected = self._fsft_setup(unwrapped)
        if self._fsft_anchor is None and self.args.fsft_anchor_lambda > 0:
            self._fsft_anchor = self._fsft_anchor_setup(unwrapped)
        # The anchor and the replay act once per optimizer step, on the first micro-batch of its accumulation
        # window: their cost per step stays fixed however large the effective batch. With fsft_anchor_every = n
        # they act on steps 0, n, 2n, ... only.
        window_start = mode == "train" and self.state.global_step != self._fsft_last_step
        if window_start:
            self._fsft_last_step = self.state.global_step
            window_start = self.state.global_step % int(self.args.fsft_anchor_every) == 0
        joint = rows = None
        if window_start and self.args.fsft_replay_lambda > 0:
            if self._fsft_replay is None:
                self._fsft_replay = AnswerReplay(self.processing_class, self._fsft_triggers, self._fsft_targets,
                                                 per_step=self.args.fsft_anchor_prompts, seed=self.args.seed)
            rows = self._fsft_replay.next_rows()
            if self._fsft_joint_pass(inputs, rows, unwrapped):
                self._fsft_release()
                joint = self._fsft_joint = self._fsft_replay.join(unwrapped, self._fsft_anchor, rows)
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss, outputs = (result if return_outputs else (result, None))
        if joint is not None:
            joint.rearm()
        # The task loss is already normalised over the accumulation window; the per-micro-batch terms are not.
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        penalise = mode == "train" and self.args.fsft_variant != "project" and self.args.fsft_lambda > 0
        if penalise:
            penalty = self.fsft_penalty()
            loss = loss + self.args.fsft_lambda * penalty.to(loss.dtype) / steps
            value = penalty.detach()
        else:
            with torch.no_grad():
                value = self.fsft_penalty(variant="input" if self.args.fsft_variant == "project" else None)
        self._metrics[mode]["fsft_penalty"].append(float(value))
        if window_start and (self._fsft_anchor is not None or rows is not None):
            replay, anchor = self._fsft_replay_and_anchor(unwrapped, joint, rows)
            # Whole weight once per window: the Trainer divides the loss by the window's length itself only when
            # the task loss is not normalised over the window (no num_items_in_batch).
            once = self.current_gradient_accumulation_steps / steps
            with torch.autocast(device_type=loss.device.type, enabled=False):
                if anchor is not None:
                    loss = loss + self.args.fsft_anchor_lambda * once * anchor.to(loss.dtype)
                    self._metrics[mode]["fsft_anchor"].append(float(anchor.detach()))
                if replay is not None:
                    loss = loss + self.args.fsft_replay_lambda * once * replay.to(loss.dtype)
                    self._metrics[mode]["fsft_replay"].append(float(replay.detach()))
        return (loss, outputs) if return_outputs else loss

    def training_step(self, *args, **kwargs):
        try:
            return super().training_step(*args, **kwargs)
        finally:
            self._fsft_release()  # after the backward pass, which may recompute checkpointed layers under the hooks

    def _fsft_joint_pass(self, inputs: dict[str, Any], rows: list[int], model: nn.Module) -> bool:
        """Whether this step's replay rows ride in the training batch (``fsft_replay_pass``)."""
        choice = self.args.fsft_replay_pass
        if choice == "separate" or self._fsft_joint_failed:
            return False
        joinable = self._fsft_replay.joinable(inputs)
        if choice == "joint":
            if not joinable:
                raise ValueError(
                    "fsft_replay_pass='joint' needs a padded batch of input_ids and attention_mask (not padding-free "
                    "or packed without a mask); use fsft_replay_pass='auto' or 'separate'."
                )
            return True
        # auto: on a GPU, where a small pass costs its kernel launches more than its arithmetic, and only while
        # padding the replay rows to the batch's width costs at most their own length again.
        width = inputs["input_ids"].shape[1] if joinable else 0
        return (joinable and inputs["input_ids"].device.type == "cuda"
                and width <= 2 * max(self._fsft_replay.row_lengths(rows)))

    def _fsft_replay_and_anchor(
        self, model: nn.Module, joint: JointReplay | None, rows: list[int] | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The replay loss and the key anchor's loss of this step, read off the training pass when ``joint`` ran
        there, otherwise from a pass of their own (one for both when both are on)."""
        anchor = self._fsft_anchor
        if joint is not None and joint.replay_loss is not None:
            keys = joint.keys
            if anchor is None:
                return joint.replay_loss, None
            if keys and (keys[0].requires_grad or not torch.is_grad_enabled()):
                return joint.replay_loss, anchor.loss(keys, rows)
            with joint.paused():
                own = anchor.keys_of(model, rows)
            if own and own[0].requires_grad:
                # Reentrant activation checkpointing runs the layers without autograd: their keys carry no gradient.
                self._fsft_joint_failed = True
                warnings.warn("The key anchor cannot read its keys off this checkpointed forward pass (reentrant "
                              "activation checkpointing); the replay runs its own pass from now on.", stacklevel=3)
            return joint.replay_loss, anchor.loss(own, rows)
        self._fsft_release()  # a joint pass that did not run (the model was called positionally) must not extend ours
        if rows is not None:
            with torch.profiler.record_function("fsft_replay_and_anchor"):
                # The anchor reads its keys off the replay's forward pass (same prompts): one pass for both.
                return self._fsft_replay.with_anchor(model, anchor, rows)
        with torch.profiler.record_function("fsft_anchor"):
            return None, anchor(model)

    def _fsft_release(self) -> None:
        if self._fsft_joint is not None:
            self._fsft_joint.remove()
            self._fsft_joint = None

    def fsft_penalty(self, variant: str | None = None) -> torch.Tensor:
        """``mean_i F_i`` over the protected matrices (differentiable, float32), for ``variant`` (default: the
        configured one). Takes the reference from the current model if training has not started."""
        if self._fsft_protected is None:
            self._fsft_protected = self._fsft_setup(self.accelerator.unwrap_model(self.model))
        variant = variant or self.args.fsft_variant
        if not self._fsft_protected:
            return torch.zeros((), device=self.accelerator.device)
        device_type = self._fsft_protected[0].V.device.type
        with torch.autocast(device_type=device_type, enabled=False), torch.profiler.record_function("fsft_penalty"):
            terms = [p.penalty(variant) for p in self._fsft_protected]
        return torch.stack(terms).mean()

    # ----- the "project" variant -----

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.args.fsft_variant == "project" and not self._fsft_hooks:
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper, if any
            self._fsft_hooks = [
                inner.register_step_pre_hook(lambda *_: self._fsft_project("gradients")),
                inner.register_step_post_hook(lambda *_: self._fsft_project("weights")),
            ]
        return optimizer

    def _fsft_project(self, what: str) -> None:
        for protected in self._fsft_protected or []:
            if what == "gradients":
                protected.project_gradients()
            else:
                protected.project_weights()

    # ----- setup -----

    def _fsft_anchor_setup(self, model: nn.Module) -> KeyAnchor:
        """The key anchor over the edited modules, its reference keys taken from ``model`` now."""
        modules = [_find_module(model, name) for name in self.fingerprint_subspace]
        was_training = model.training
        model.eval()
        try:
            return KeyAnchor(model, self.processing_class, self._fsft_triggers, modules,
                             per_step=self.args.fsft_anchor_prompts, seed=self.args.seed)
        finally:
            model.train(was_training)

    def _fsft_setup(self, model: nn.Module) -> list[_Protected]:
        """Resolve each edited module in the (unwrapped) model and take the reference ``We V``."""
        protected = []
        from_model = not self.fingerprint_subspace.has_reference
        if from_model and self.state.global_step > 0:
            warnings.warn(
                "FSFT took its reference weights after resuming at step "
                f"{self.state.global_step}, so it protects the resumed weights, not the fingerprinted ones. Pass "
                "a subspace with a reference (FingerprintSubspace.from_pair or .with_reference(model)).",
                stacklevel=3,
            )
        mismatch = []
        for name, sub in self.fingerprint_subspace.items():
            module = _find_module(model, name)
            _check_module(module, name, sub)
            entry = self._fsft_entry(module, name, sub, from_model)
            if entry is None:
                continue
            if sub.reference is not None:
                with torch.no_grad():
                    current = entry.drift()
                current = current.full_tensor() if _is_dtensor(current) else current
                if float(current.norm()) > 1e-3 * max(float(sub.reference.norm()), 1e-12):
                    mismatch.append(name)
            protected.append(entry)
        if mismatch:
            warnings.warn(
                f"The model being trained does not carry the fingerprint edit at {mismatch[:3]}"
                f"{'...' if len(mismatch) > 3 else ''}: the FSFT penalty pulls these weights toward it.",
                stacklevel=3,
            )
        if not protected:
            warnings.warn(
                "None of the edited modules is trainable (frozen, or not a LoRA target): the FSFT penalty is 0. "
                "With peft_config, include the edited modules in target_modules.",
                stacklevel=3,
            )
        return protected

    def _fsft_entry(self, module: nn.Module, name: str, sub: ModuleSubspace, from_model: bool) -> _Protected | None:
        base = getattr(module, "base_layer", module)
        weight = base.weight
        device = weight.device
        factors = dict(
            U=sub.U.to(device), S=sub.S.to(device), V=sub.V.to(device), energy=float((sub.S.double() ** 2).sum())
        )
        lora = self._fsft_lora_factors(module, name) if base is not module else []
        if not lora and not weight.requires_grad:
            return None  # frozen: its drift is constant
        if lora and from_model:
            return _Protected(name, **factors, lora=lora)  # the base weight is We: no offset, never read
        with torch.no_grad():
            weight_image = weight.detach().float() @ _replicated(factors["V"], weight)
            reference = weight_image if from_model else _distributed_like(sub.reference.to(device), weight_image)
        if lora:
            return _Protected(name, **factors, lora=lora, offset=weight_image - reference)
        return _Protected(name, **factors, weight=weight, reference=reference)

    @staticmethod
    def _fsft_lora_factors(module: nn.Module, name: str) -> list[_LoraFactor]:
        """The trainable LoRA factors of the active adapters of a PEFT LoRA layer."""
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict):
            return []
        factors = []
        for adapter in getattr(module, "active_adapters", []):
            if adapter not in lora_a or not lora_a[adapter].weight.requires_grad:
                continue
            if getattr(module, "use_dora", {}).get(adapter, False):
                raise SubspaceError(f"{name!r} carries a DoRA adapter; FSFT supports plain LoRA only.")
            factors.append(_LoraFactor(lora_a[adapter].weight, module.lora_B[adapter].weight,
                                       float(module.scaling[adapter])))
        return factors


# ----- helpers -----

_ZERO3_MESSAGE = (
    "FSFTTrainer does not support DeepSpeed ZeRO-3: it partitions the weights outside the forward pass, where the "
    "FSFT penalty reads the edited matrices. Use ZeRO-2, DDP or FSDP2 (fsdp_version: 2)."
)


def _refuse_zero3() -> None:
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ValueError(_ZERO3_MESSAGE)


def _as_fsft_config(args: Any, model: Any) -> FSFTConfig:
    if isinstance(args, FSFTConfig):
        return args
    if args is None:
        from trl.trainer.utils import get_config_model_id

        model_name = model if isinstance(model, str) else get_config_model_id(model.config)
        return FSFTConfig(f"{str(model_name).split('/')[-1]}-FSFT")
    if isinstance(args, TrainingArguments):
        # Copy the init fields themselves: to_dict() masks every "*_token" field (eos_token, pad_token...).
        accepted = {f.name for f in dataclasses.fields(FSFTConfig) if f.init}
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in accepted}
        return FSFTConfig(**values)
    raise TypeError(f"args must be an FSFTConfig, SFTConfig or TrainingArguments, got {type(args).__name__}.")


def _pairs(fingerprints: Any) -> tuple[list[str], list[str | None]]:
    """Triggers and targets of a FingerprintSet, of Fingerprint objects, (trigger, target) pairs or plain trigger
    strings (whose targets are None), or the path of a saved fingerprint set."""
    from ..fingerprints import FingerprintSet

    if isinstance(fingerprints, (str, os.PathLike)):  # a path, not an iterable of characters
        fingerprints = FingerprintSet.load(fingerprints)
    try:
        items = list(fingerprints)
    except TypeError:
        raise ValueError(
            "fingerprints must be a FingerprintSet (or its file's path), Fingerprint objects, (trigger, target) "
            f"pairs or trigger strings; got {type(fingerprints).__name__}."
        ) from None
    triggers, targets = [], []
    for item in items:
        if isinstance(item, str):
            trigger, target = item, None
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            trigger, target = item
        else:
            trigger, target = getattr(item, "trigger", None), getattr(item, "target", None)
        if not isinstance(trigger, str) or not trigger or not (target is None or isinstance(target, str)):
            raise ValueError(
                "fingerprints must be a FingerprintSet, Fingerprint objects, (trigger, target) pairs or trigger "
                f"strings; got an item of type {type(item).__name__}."
            )
        triggers.append(trigger)
        targets.append(target)
    return triggers, targets


def _check_module(module: nn.Module, name: str, sub: ModuleSubspace) -> None:
    base = getattr(module, "base_layer", module)
    if not isinstance(base, nn.Linear):
        raise SubspaceError(f"Module {name!r} is a {type(base).__name__}; FSFT protects nn.Linear weights only.")
    if tuple(base.weight.shape) != sub.shape:
        raise SubspaceError(
            f"Module {name!r} has a weight of shape {tuple(base.weight.shape)} but the edit is {sub.shape} "
            "(out x in): the fingerprint subspace belongs to another model."
        )
    if getattr(module, "merged", False):
        raise SubspaceError(f"{name!r} has merged LoRA weights; unmerge them before training.")


def _is_dtensor(tensor: torch.Tensor) -> bool:
    return type(tensor).__name__ == "DTensor"


def _replicated(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a replicated DTensor on ``like``'s mesh when ``like`` is an FSDP2 DTensor."""
    if not _is_dtensor(like):
        return tensor
    from torch.distributed.tensor import DTensor, Replicate

    return DTensor.from_local(tensor, like.device_mesh, [Replicate()] * like.device_mesh.ndim, run_check=False)


def _distributed_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out like the DTensor ``like`` (same mesh and placements), or as is."""
    if not _is_dtensor(like):
        return tensor
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(tensor, like.device_mesh, like.placements)
