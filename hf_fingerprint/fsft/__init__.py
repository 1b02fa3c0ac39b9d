"""FSFT: fingerprint subspace-aware fine-tuning, a drop-in for TRL's SFTTrainer (METHOD.md section 5).

``FingerprintSubspace`` needs only torch; ``FSFTConfig`` and ``FSFTTrainer`` import TRL (several seconds), so they
are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .subspace import FingerprintSubspace, ModuleSubspace

if TYPE_CHECKING:
    from .config import FSFT_VARIANTS, FSFTConfig
    from .trainer import FSFTTrainer

__all__ = ["FSFT_VARIANTS", "FSFTConfig", "FSFTTrainer", "FingerprintSubspace", "ModuleSubspace"]

_LAZY = {"FSFTConfig": ".config", "FSFT_VARIANTS": ".config", "FSFTTrainer": ".trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
