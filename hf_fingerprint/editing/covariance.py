"""Second-moment statistics C0 = E[k k^T] of the edited modules' inputs over ordinary text, cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..generation import chat_prompt, model_device
from ..models import cache_dir
from .layout import ModelLayout, get_module
from .tracing import StopForward

logger = logging.getLogger(__name__)


def builtin_corpus(limit: int = 600) -> list[str]:
    """Human-written English that every Python install has: standard-library documentation paragraphs."""
    from ..tasks import stdlib_documentation

    texts = [" ".join(text.split()) for _, _, _, text in stdlib_documentation()]
    return [t for t in texts if 80 <= len(t) <= 800][:limit]


def corpus_texts(tokenizer: Any, corpus: Any = None, *, limit: int = 600) -> list[str]:
    """Texts for statistics: the built-in corpus (half as chat turns), a ``datasets.Dataset``, text files, or strings."""
    if corpus is None:
        texts = builtin_corpus(limit)
        half = len(texts) // 2
        return [chat_prompt(tokenizer, t) for t in texts[:half]] + texts[half:]
    if hasattr(corpus, "column_names"):  # a datasets.Dataset
        column = "text" if "text" in corpus.column_names else corpus.column_names[0]
        return [str(t) for t in corpus[column][:limit]]
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
        files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
        return [part for f in files for part in f.read_text(encoding="utf-8").split("\n\n") if part.strip()][:limit]
    return [str(t) for t in list(corpus)[:limit]]


def _corpus_key(tokenizer: Any, corpus: Any) -> tuple[str, list[str] | None]:
    """A cache key for the corpus; the built-in one is named by version instead of hashed (building it is slow)."""
    if corpus is None:
        template = hashlib.sha256(str(getattr(tokenizer, "chat_template", "")).encode()).hexdigest()[:8]
        return f"builtin-v1-py{sys.version_info.major}.{sys.version_info.minor}-{template}", None
    texts = corpus_texts(tokenizer, corpus)
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12], texts


def model_fingerprint(model: Any) -> str:
    """A short identity of the weights (config + a sample of parameter values) used as the cache key."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, param in list(model.named_parameters())[:: max(1, len(list(model.parameters())) // 16)]:
        flat = param.detach().flatten()
        digest.update(name.encode())
        digest.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def statistics_folder(model: Any, tokenizer: Any, *, corpus: Any = None, module: str = "down_proj",
                      max_tokens: int = 20_000, max_length: int = 256) -> tuple[Path, list[str] | None]:
    """Where the statistics of these weights, module and corpus (and what is derived from them) are cached."""
    corpus_key, texts = _corpus_key(tokenizer, corpus)
    key = f"{model_fingerprint(model)}-{module}-{corpus_key}-{max_tokens}-{max_length}"
    return cache_dir() / "stats" / key, texts


def _save_atomically(value: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(value.cpu(), tmp)
    tmp.replace(path)


def _load_cached(path: Path) -> torch.Tensor | None:
    """The tensor cached at ``path``, or None when there is none or it is unreadable (truncated, tampered: then
    it is recomputed and replaced, with a warning)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:  # a cache: recompute rather than fail
        logger.warning("Recomputing the unreadable cache file %s (%s).", path, type(error).__name__)
        return None


def cached_tensor(path: Path, make: Callable[[], torch.Tensor], *, use_cache: bool = True) -> torch.Tensor:
    """``torch.load(path)`` when it is there, else ``make()`` saved to ``path`` (atomically) on the CPU.

    An unreadable cache file (truncated, tampered) is recomputed and replaced, with a warning."""
    cached = _load_cached(path) if use_cache else None
    if cached is not None:
        return cached
    value = make()
    if use_cache:
        _save_atomically(value, path)
    return value


def layer_statistics(
    model: Any,
    tokenizer: Any,
    layout: ModelLayout,
    layers: Sequence[int],
    *,
    corpus: Any = None,
    module: str = "down_proj",
    max_tokens: int = 20_000,
    max_length: int = 256,
    batch_size: int = 8,
    use_cache: bool = True,
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """C0 = mean of k k^T over corpus tokens for each layer (float32, CPU), from cache when it is there.

    Sequences are cut to ``max_length`` tokens and the total to ``max_tokens``, so memory stays bounded;
    sums accumulate in float64.
    """
    folder, texts = statistics_folder(model, tokenizer, corpus=corpus, module=module, max_tokens=max_tokens,
                                      max_length=max_length)
    result: dict[int, torch.Tensor] = {}
    missing = []
    for layer in layers:
        cached = _load_cached(folder / f"layer{layer}.pt") if use_cache else None
        if cached is None:
            missing.append(layer)
        else:
            result[layer] = cached
    if not missing:
        return result
    if texts is None:
        texts = corpus_texts(tokenizer, corpus)
    device = model_device(model)
    # Accumulated on a GPU when the model is on one (d_ff^2 float64 per layer); on the CPU otherwise.
    where = device if device.type == "cuda" else torch.device("cpu")
    size = layout.intermediate_size
    sums = {i: torch.zeros(size, size, dtype=torch.float64, device=where) for i in missing}
    counted = {"tokens": 0}
    current: dict[str, torch.Tensor] = {}

    def hook(index: int):
        def fn(_module, args):
            keys = args[0][current["mask"]].to(where, torch.float64)
            sums[index].addmm_(keys.T, keys)
            if index == deepest:  # nothing after this layer is needed
                raise StopForward

        return fn

    deepest = max(missing)
    handles = [get_module(model, layout.module_name(i, module)).register_forward_pre_hook(hook(i)) for i in missing]
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    bar = tqdm(total=max_tokens, desc="covariance statistics", disable=not progress, leave=False, unit="tok")
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                if counted["tokens"] >= max_tokens:
                    break
                enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                                truncation=True, max_length=max_length, add_special_tokens=False).to(device)
                current["mask"] = enc["attention_mask"].bool()
                try:
                    model(**enc, use_cache=False)
                except StopForward:
                    pass
                n = int(enc["attention_mask"].sum())
                counted["tokens"] += n
                bar.update(n)
    finally:
        tokenizer.padding_side = side
        bar.close()
        for handle in handles:
            handle.remove()
    for layer in missing:
        stat = (sums.pop(layer) / max(1, counted["tokens"])).float().cpu()
        result[layer] = stat
        if use_cache:
            _save_atomically(stat, folder / f"layer{layer}.pt")
    return result
