"""The fingerprint subspace: per edited matrix, the SVD factors of the edit dWfp = We - W0.

FSFT only needs, for each edited ``nn.Linear`` weight (``out x in``), the singular triplets ``U`` (out x k),
``S`` (k) and ``V`` (in x k) of the edit, and optionally the reference ``We @ V`` (out x k) of the fingerprinted
weight. It never stores a dense weight. A subspace is built from editor outputs (``EditDelta``), from a stock
PEFT LoRA adapter folder, or from a (base, fingerprinted) pair of models.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..editing.delta import EditDelta
from ..errors import SubspaceError

__all__ = ["FingerprintSubspace", "ModuleSubspace"]

# Singular values below this fraction of the largest one are numerical zeros, not directions of the edit.
_REL_ZERO = 1e-6
_PEFT_PREFIX = "base_model.model."
_ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class ModuleSubspace:
    """The edit of one weight matrix as ``U diag(S) V^T`` (float32, CPU).

    ``U`` is ``out x k`` and ``V`` is ``in x k`` with orthonormal columns; ``S`` is descending and positive.
    ``total_energy`` is ``||dWfp||_F^2`` (it exceeds ``sum(S**2)`` when the stored spectrum was capped).
    ``reference`` is ``We @ V`` (``out x k``) when the fingerprinted weights were known, else ``None``.
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    total_energy: float
    reference: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.S.numel())

    @property
    def shape(self) -> tuple[int, int]:
        """``(out, in)``, the shape of the edited weight."""
        return int(self.U.shape[0]), int(self.V.shape[0])

    def rank_for(self, *, rank: int | None = None, energy: float = 1.0) -> int:
        """Number of directions to keep: ``rank`` if given (capped at the stored rank), else the fewest whose
        squared singular values reach ``energy`` of ``total_energy``."""
        if rank is not None:
            return max(1, min(int(rank), self.rank))
        cumulative = torch.cumsum(self.S.double() ** 2, 0) / self.total_energy
        reached = (cumulative >= energy - 1e-12).nonzero()
        return int(reached[0]) + 1 if len(reached) else self.rank

    def truncated(self, k: int) -> ModuleSubspace:
        """The first ``k`` directions."""
        reference = None if self.reference is None else self.reference[:, :k]
        return ModuleSubspace(self.U[:, :k], self.S[:k], self.V[:, :k], self.total_energy, reference)

    def dense(self) -> torch.Tensor:
        """``U diag(S) V^T`` as an ``out x in`` float32 tensor (for tests and inspection; costs a full matrix)."""
        return (self.U * self.S) @ self.V.T


class FingerprintSubspace(Mapping[str, ModuleSubspace]):
    """Per edited module name (as in the plain ``transformers`` model, e.g. ``model.layers.6.mlp.down_proj``),
    the singular factors of the fingerprint edit. A read-only mapping ``name -> ModuleSubspace``."""

    def __init__(self, modules: Mapping[str, ModuleSubspace], *, source: str = "") -> None:
        if not modules:
            raise SubspaceError("A fingerprint subspace needs at least one edited module; none was given.")
        self._modules = dict(sorted(modules.items()))
        self.source = source

    def __getitem__(self, name: str) -> ModuleSubspace:
        return self._modules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __repr__(self) -> str:
        ranks = ", ".join(f"{name}: rank {sub.rank}" for name, sub in self._modules.items())
        return f"FingerprintSubspace({ranks}; from {self.source or 'unknown'})"

    @property
    def has_reference(self) -> bool:
        """Whether every module carries ``We @ V`` (otherwise the trainer takes it from the model at step 0)."""
        return all(sub.reference is not None for sub in self._modules.values())

    def truncated(self, *, rank: int | None = None, energy: float = 1.0) -> FingerprintSubspace:
        """Keep per module ``rank`` directions, or as many as reach ``energy`` of the edit's spectral energy."""
        return FingerprintSubspace(
            {name: sub.truncated(sub.rank_for(rank=rank, energy=energy)) for name, sub in self._modules.items()},
            source=self.source,
        )

    def with_reference(self, fingerprinted_model: nn.Module) -> FingerprintSubspace:
        """Record ``We @ V`` from the fingerprinted model, so the penalty measures drift from the true edit even
        when training resumes from a checkpoint or starts from other weights."""
        modules = {}
        for name, sub in self._modules.items():
            weight = _linear_weight(fingerprinted_model, name, sub.shape)
            with torch.no_grad():
                reference = weight.detach().to("cpu", torch.float32) @ sub.V
            modules[name] = ModuleSubspace(sub.U, sub.S, sub.V, sub.total_energy, reference)
        return FingerprintSubspace(modules, source=self.source)

    # ----- constructors -----

    @classmethod
    def from_deltas(
        cls,
        deltas: Iterable[EditDelta] | Mapping[str, EditDelta],
        model: nn.Module | None = None,
    ) -> FingerprintSubspace:
        """From editor outputs (``dW = U @ V.T`` per module); several deltas on one module add up.

        ``model``, if given, is only used to check that every module exists with the delta's shape; to record
        the fingerprinted weights as the reference, call ``.with_reference(fingerprinted_model)``.
        """
        items = list(deltas.values()) if isinstance(deltas, Mapping) else list(deltas)
        if not items:
            raise SubspaceError("No edit deltas were given: the injection edited nothing.")
        grouped: dict[str, list[EditDelta]] = {}
        for delta in items:
            if not isinstance(delta, EditDelta):
                raise SubspaceError(
                    f"Expected hf_fingerprint.editing.delta.EditDelta items, got {type(delta).__name__}."
                )
            if delta.is_dense:
                raise SubspaceError(
                    f"The update of {delta.module!r} is dense (method='sft' fine-tunes whole matrices), so it has no "
                    "low-rank factors: build the subspace with FingerprintSubspace.from_pair(original_model, "
                    "fingerprinted_model) instead."
                )
            grouped.setdefault(delta.module, []).append(delta)
        modules = {}
        for name, group in grouped.items():
            left = torch.cat([d.U.detach().to("cpu", torch.float32) for d in group], dim=1)
            right = torch.cat([d.V.detach().to("cpu", torch.float32) for d in group], dim=1)
            if left.shape[1] != right.shape[1] or left.ndim != 2 or right.ndim != 2:
                raise SubspaceError(f"Edit delta of {name!r} has factors of shapes {tuple(left.shape)} and "
                                    f"{tuple(right.shape)}; expected U (out x r) and V (in x r).")
            if model is not None:
                _linear_weight(model, name, (left.shape[0], right.shape[0]))
            modules[name] = _factorize(name, left, right)
        return cls(modules, source="edit deltas")

    @classmethod
    def from_adapter(cls, folder: str | os.PathLike) -> FingerprintSubspace:
        """From a stock PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``):
        ``dW = scaling * lora_B @ lora_A`` per module, read directly from the safetensors file.

        A folder that holds no adapter itself but exactly one sub-folder with one (an injection output) works too.
        """
        folder = _find_adapter_folder(Path(folder))
        try:
            config = json.loads((folder / _ADAPTER_CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SubspaceError(f"Cannot read {folder / _ADAPTER_CONFIG}: {err}.") from err
        peft_type = str(config.get("peft_type", "")).upper()
        if peft_type != "LORA":
            raise SubspaceError(
                f"{folder} holds a PEFT adapter of type {config.get('peft_type')!r}; a fingerprint adapter is a "
                "LoRA (peft_type 'LORA')."
            )
        if config.get("use_dora"):
            raise SubspaceError(f"{folder} is a DoRA adapter, whose update is not B @ A; use a plain LoRA.")
        if config.get("fan_in_fan_out"):
            raise SubspaceError(
                f"{folder} stores transposed (fan_in_fan_out) LoRA weights for Conv1D layers; FSFT protects "
                "nn.Linear weights only."
            )
        weights_file = folder / _ADAPTER_WEIGHTS
        if not weights_file.is_file():
            raise SubspaceError(f"{folder} has no {_ADAPTER_WEIGHTS}; save the adapter with safetensors.")
        from safetensors.torch import load_file

        tensors = load_file(str(weights_file), device="cpu")
        factors: dict[str, dict[str, torch.Tensor]] = {}
        ignored = []
        for key, tensor in tensors.items():
            match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[\w-]+)?\.weight", key)
            if match is None:
                ignored.append(key)
                continue
            factors.setdefault(match.group(1), {})[match.group(2)] = tensor
        if ignored:
            warnings.warn(
                f"{folder}: {len(ignored)} adapter tensors are not LoRA factors and are ignored "
                f"(first: {ignored[0]}).",
                stacklevel=2,
            )
        if not factors:
            raise SubspaceError(f"{weights_file} holds no lora_A/lora_B weights.")
        modules = {}
        for name, pair in factors.items():
            if set(pair) != {"A", "B"}:
                raise SubspaceError(f"{weights_file}: module {name!r} has lora_{''.join(pair)} but not both factors.")
            lora_a, lora_b = pair["A"].to(torch.float32), pair["B"].to(torch.float32)
            r = lora_a.shape[0]
            if lora_b.shape[1] != r:
                raise SubspaceError(
                    f"{weights_file}: {name!r} has lora_A {tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)}."
                )
            alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config.get("lora_alpha", 8))
            scaling = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
            modules[name] = _factorize(name, scaling * lora_b, lora_a.T)
        return cls(modules, source=f"adapter {folder}")

    @classmethod
    def from_pair(
        cls,
        base_model: nn.Module | str | os.PathLike,
        fingerprinted_model: nn.Module | str | os.PathLike,
        *,
        atol: float = 1e-6,
        max_rank: int = 64,
    ) -> FingerprintSubspace:
        """From a base model and its fingerprinted copy: every ``nn.Linear`` whose weights differ by more than
        ``atol`` (max abs) is an edited module; its difference is factored by SVD, keeping at most ``max_rank``
        directions. The fingerprinted weights become the reference. Paths are loaded in float32."""
        base = _as_model(base_model)
        fingerprinted = _as_model(fingerprinted_model)
        base_modules = dict(base.named_modules())
        modules = {}
        linear_count = 0
        for name, module in fingerprinted.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            linear_count += 1
            other = base_modules.get(name)
            if not isinstance(other, nn.Linear) or other.weight.shape != module.weight.shape:
                raise SubspaceError(
                    f"The two models differ in architecture at {name!r}; from_pair needs a model and its "
                    "fingerprinted copy."
                )
            with torch.no_grad():
                diff = module.weight.detach().to("cpu", torch.float32) - other.weight.detach().to("cpu", torch.float32)
                if diff.abs().max() <= atol:
                    continue
                sub = _svd(name, diff, max_rank)
                reference = module.weight.detach().to("cpu", torch.float32) @ sub.V
            modules[name] = ModuleSubspace(sub.U, sub.S, sub.V, sub.total_energy, reference)
        if not modules:
            raise SubspaceError(
                f"No nn.Linear weight differs by more than atol={atol} between the two models: the second is not "
                "a fingerprinted copy of the first (or the edit is not in linear layers)."
            )
        if linear_count > 4 and len(modules) > linear_count // 2:
            warnings.warn(
                f"{len(modules)} of {linear_count} linear layers differ: the models look like separate fine-tunes "
                "or a dtype round trip, not one edit. Consider a larger atol.",
                stacklevel=2,
            )
        return cls(modules, source="model pair")

    @classmethod
    def build(cls, obj: Any) -> FingerprintSubspace:
        """Dispatch on what a user holds: a ``FingerprintSubspace``; an injection result (anything with a
        ``.deltas`` list or dict of ``EditDelta``); ``EditDelta`` items; an adapter folder path; or a
        ``(base_model, fingerprinted_model)`` pair."""
        if isinstance(obj, FingerprintSubspace):
            return obj
        if hasattr(obj, "deltas"):
            return cls.from_deltas(obj.deltas)
        if isinstance(obj, (str, os.PathLike)):
            return cls.from_adapter(obj)
        if isinstance(obj, EditDelta):
            return cls.from_deltas([obj])
        if isinstance(obj, Mapping) and obj and all(isinstance(v, EditDelta) for v in obj.values()):
            return cls.from_deltas(obj)
        if isinstance(obj, (list, tuple)) and obj and all(isinstance(v, EditDelta) for v in obj):
            return cls.from_deltas(obj)
        if (
            isinstance(obj, (list, tuple))
            and len(obj) == 2
            and all(isinstance(v, (nn.Module, str, os.PathLike)) for v in obj)
        ):
            return cls.from_pair(obj[0], obj[1])
        raise SubspaceError(
            f"Cannot build a fingerprint subspace from {type(obj).__name__}. Pass an injection result (with "
            "`.deltas`), a fingerprint adapter folder, a (base_model, fingerprinted_model) pair, or a "
            "FingerprintSubspace."
        )


# ----- helpers -----


def _factorize(name: str, left: torch.Tensor, right: torch.Tensor) -> ModuleSubspace:
    """SVD of ``left @ right.T`` (out x r, in x r) through two thin QRs and an r x r SVD."""
    q_left, r_left = torch.linalg.qr(left.double())
    q_right, r_right = torch.linalg.qr(right.double())
    small_u, s, small_vh = torch.linalg.svd(r_left @ r_right.T)
    keep = s > _REL_ZERO * s.max() if s.numel() and s.max() > 0 else torch.zeros_like(s, dtype=torch.bool)
    if not keep.any():
        raise SubspaceError(f"The edit of {name!r} is zero; nothing to protect.")
    u = (q_left @ small_u)[:, keep].float()
    v = (q_right @ small_vh.T)[:, keep].float()
    s = s[keep]
    return ModuleSubspace(u.contiguous(), s.float(), v.contiguous(), float((s**2).sum()))


def _svd(name: str, dense: torch.Tensor, max_rank: int) -> ModuleSubspace:
    """Top ``max_rank`` singular triplets of a dense difference (randomised for large matrices)."""
    total = float((dense.double() ** 2).sum())
    if min(dense.shape) <= 2048 or min(dense.shape) <= 4 * max_rank:
        u, s, vh = torch.linalg.svd(dense, full_matrices=False)
        v = vh.T
    else:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(dense, q=min(max_rank + 16, min(dense.shape)), niter=6)
        torch.random.set_rng_state(generator_state)
    k = min(max_rank, int((s > _REL_ZERO * s.max()).sum()))
    if k == 0:
        raise SubspaceError(f"The edit of {name!r} is zero; nothing to protect.")
    return ModuleSubspace(u[:, :k].contiguous(), s[:k].clone(), v[:, :k].contiguous(), total)


def _pattern_value(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a key matches a module name it ends (as a regex) on a
    dot boundary."""
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", name):
            return value
    return default


def _find_adapter_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise SubspaceError(f"{folder} is not a folder; expected a PEFT LoRA adapter folder.")
    if (folder / _ADAPTER_CONFIG).is_file():
        return folder
    candidates = sorted(p.parent for p in folder.glob(f"*/{_ADAPTER_CONFIG}"))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(str(c.name) for c in candidates)
        raise SubspaceError(f"{folder} holds several adapters ({names}); pass the one to protect.")
    raise SubspaceError(
        f"{folder} is not a LoRA adapter folder: it has no {_ADAPTER_CONFIG} (nor a sub-folder with one)."
    )


def _as_model(model: nn.Module | str | os.PathLike) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise SubspaceError(f"Cannot load a model from {model!r}: {err}") from err


def _linear_weight(model: nn.Module, name: str, shape: tuple[int, int]) -> torch.Tensor:
    """The weight of module ``name`` of a plain or PEFT-wrapped model, checked to be ``shape``."""
    module = _find_module(model, name)
    base = getattr(module, "base_layer", module)
    weight = getattr(base, "weight", None)
    if not isinstance(base, nn.Linear) or weight is None:
        raise SubspaceError(f"Module {name!r} is a {type(base).__name__}; FSFT protects nn.Linear weights only.")
    if tuple(weight.shape) != tuple(shape):
        raise SubspaceError(
            f"Module {name!r} has a weight of shape {tuple(weight.shape)} but the edit is {tuple(shape)} "
            "(out x in): the subspace belongs to another model."
        )
    return weight


def _find_module(model: nn.Module, name: str) -> nn.Module:
    """Find ``name`` (a plain-model module name) in ``model``, which may be a PEFT model."""
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    for candidate in (name, name.removeprefix(_PEFT_PREFIX)):
        try:
            return root.get_submodule(candidate)
        except AttributeError:
            continue
    raise SubspaceError(
        f"The model has no module {name!r}: the fingerprint subspace was built for a different architecture."
    )
