"""Weight quantization as a deployed model would see it, simulated in float: quantize, then de-quantize in place.

Round-to-nearest (RTN) runs anywhere and is deterministic; it is what int8 / 4-bit weight-only formats do
before any calibration (GPTQ and AWQ are smarter and usually hurt less). Scales (and minima) are rounded to
float16, as the formats store them. ``lm_head`` is skipped by default, as bitsandbytes, GPTQ and AWQ do; with
tied embeddings, quantizing it would also quantize the input embedding.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..editing.layout import base_model
from ._common import EvaluationError, linear_weights, working_copy

__all__ = ["fake_quantize", "quantize_4bit", "quantize_int8"]

SKIP_MODULES = ("lm_head",)


def fake_quantize(
    weight: torch.Tensor, *, bits: int, group_size: int | None = None, symmetric: bool = True
) -> torch.Tensor:
    """``weight`` (out x in) rounded to ``bits``-bit integers per group of ``group_size`` inputs, de-quantized.

    Symmetric: ``scale = max|w| / (2^(bits-1) - 1)``, integers in ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``.
    Asymmetric: ``scale = (max - min) / (2^bits - 1)`` and the group minimum as offset (GGUF Q4_1 style),
    integers in ``[0, 2^bits - 1]``. ``group_size=None`` means one group per output row (per-channel); a last
    group shorter than ``group_size`` is its own group.
    """
    if weight.dim() != 2:
        raise EvaluationError(f"Expected a 2-D weight (out x in), got shape {tuple(weight.shape)}.")
    if not 2 <= bits <= 16:
        raise EvaluationError(f"bits must be in 2..16, got {bits}.")
    rows, cols = weight.shape
    size = cols if group_size is None else int(group_size)
    if size < 1:
        raise EvaluationError(f"group_size must be a positive integer or None, got {group_size!r}.")
    source = weight.detach().float()
    out = torch.empty_like(source)
    full = cols // size * size
    if full:
        out[:, :full] = _round_groups(source[:, :full].reshape(rows, -1, size), bits, symmetric).reshape(rows, full)
    if full < cols:
        out[:, full:] = _round_groups(source[:, full:].reshape(rows, 1, -1), bits, symmetric).reshape(rows, -1)
    return out.to(weight.dtype)


def _round_groups(groups: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Round-to-nearest along the last dimension; scales and offsets stored as float16."""
    if symmetric:
        levels = 2 ** (bits - 1) - 1
        scale = _stored_scale(groups.abs().amax(-1, keepdim=True) / levels)
        return torch.round(groups / scale).clamp(-levels, levels) * scale
    levels = 2**bits - 1
    low = groups.amin(-1, keepdim=True).half().float()
    scale = _stored_scale((groups.amax(-1, keepdim=True) - low) / levels)
    return torch.round((groups - low) / scale).clamp(0, levels) * scale + low


def _stored_scale(scale: torch.Tensor) -> torch.Tensor:
    """A scale as a float16 format stores it; a zero scale (a constant group) becomes 1."""
    scale = scale.half().float()
    return scale.masked_fill(scale == 0, 1.0)


def quantize_int8(
    model: Any,
    *,
    activations: bool = False,
    skip_modules: Sequence[str] = SKIP_MODULES,
    inplace: bool = False,
) -> Any:
    """Dynamic int8: every linear weight rounded per output channel (symmetric, 255 levels).

    With ``activations=True`` each linear's input is also rounded to int8 per token at run time (absmax, as
    LLM.int8 without its outlier path) through forward pre-hooks; by default only weights are quantized.
    Returns a copy unless ``inplace``.
    """
    result = working_copy(model, inplace)
    with torch.no_grad():
        for _, weight in linear_weights(result, skip_modules=skip_modules):
            weight.copy_(fake_quantize(weight, bits=8, group_size=None, symmetric=True))
    if activations:
        for name, module in base_model(result).named_modules():
            if isinstance(module, nn.Linear) and name.split(".")[-1] not in skip_modules:
                module.register_forward_pre_hook(_quantize_input_int8)
    return result


def _quantize_input_int8(_module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    scale = (x.detach().abs().amax(-1, keepdim=True).float() / 127).clamp(min=1e-12)
    return (torch.round(x.float() / scale).clamp(-127, 127).mul(scale).to(x.dtype),) + tuple(args[1:])


def quantize_4bit(
    model: Any,
    *,
    group_size: int = 64,
    symmetric: bool = False,
    backend: str = "rtn",
    skip_modules: Sequence[str] = SKIP_MODULES,
    inplace: bool = False,
) -> Any:
    """4-bit weights in groups of ``group_size`` inputs, de-quantized in place.

    ``backend="rtn"`` (default, CPU, deterministic): round-to-nearest, asymmetric (scale and minimum per group,
    like GGUF Q4_1) unless ``symmetric``. ``backend="bitsandbytes"``: NF4 through ``bitsandbytes`` on a CUDA
    GPU (``group_size`` is its block size; ``symmetric`` is ignored: NF4 is absmax-scaled). Returns a copy unless
    ``inplace``.
    """
    if backend not in ("rtn", "bitsandbytes"):
        raise EvaluationError(f"Unknown backend {backend!r}; choose 'rtn' or 'bitsandbytes'.")
    if group_size < 1:
        raise EvaluationError(f"group_size must be a positive integer, got {group_size}.")
    quantize = _nf4_bitsandbytes() if backend == "bitsandbytes" else None
    result = working_copy(model, inplace)
    with torch.no_grad():
        for _, weight in linear_weights(result, skip_modules=skip_modules):
            if quantize is None:
                weight.copy_(fake_quantize(weight, bits=4, group_size=group_size, symmetric=symmetric))
            else:
                weight.copy_(quantize(weight, group_size))
    return result


def _nf4_bitsandbytes() -> Any:
    """A function ``(weight, block size) -> NF4-rounded weight`` backed by bitsandbytes on CUDA."""
    try:
        import bitsandbytes.functional as bnb
    except ImportError:
        bnb = None
    if bnb is None or not torch.cuda.is_available():
        raise EvaluationError(
            "backend='bitsandbytes' needs the bitsandbytes package and a CUDA GPU (pip install bitsandbytes); "
            "use backend='rtn' on the CPU."
        )

    def quantize(weight: torch.Tensor, block: int) -> torch.Tensor:
        source = weight.detach().to("cuda", torch.float16).contiguous()
        packed, state = bnb.quantize_4bit(source, blocksize=block, quant_type="nf4")
        return bnb.dequantize_4bit(packed, state).to(weight.device, weight.dtype)

    return quantize
