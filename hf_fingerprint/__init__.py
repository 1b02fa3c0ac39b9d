"""hf_fingerprint: edit-based fingerprints for open-weight LLMs.

Owners plant secret trigger -> target pairs by knowledge editing, keep them through fine-tuning with
FSFT, and prove ownership of a suspect model with a p-value.
"""

import importlib
from typing import Any

from .editing import EditDelta, InjectionResult, RLEditConfig, RLEditHypernetwork, get_fingerprint_model, inject, train_rledit
from .errors import (
    EvaluationError,
    FingerprintError,
    FingerprintFileError,
    FingerprintSetError,
    HubError,
    InjectionError,
    IntegrityError,
    KeyFileError,
    ModelLoadError,
    SubspaceError,
    UnsupportedArchitectureError,
)
from .fingerprints import Fingerprint, FingerprintSet, NearMiss
from .fsft import FingerprintSubspace
from .models import EMBEDDED_MODEL, load_model, tiny_model
from .verification import PairOutcome, VerificationReport, verify

__version__ = "0.1.0"

# TRL (FSFT trainer) and datasets (tasks) take seconds to import: load them on first use.
_LAZY = {
    "FSFTConfig": "hf_fingerprint.fsft",
    "FSFTTrainer": "hf_fingerprint.fsft",
    "math_task": "hf_fingerprint.tasks",
    "math_accuracy": "hf_fingerprint.tasks",
    "instruction_task": "hf_fingerprint.tasks",
    "train_eval_split": "hf_fingerprint.tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_fingerprint' has no attribute {name!r}")


__all__ = [
    "EMBEDDED_MODEL",
    "EditDelta",
    "EvaluationError",
    "FSFTConfig",
    "FSFTTrainer",
    "FingerprintSubspace",
    "HubError",
    "InjectionError",
    "InjectionResult",
    "IntegrityError",
    "KeyFileError",
    "RLEditConfig",
    "RLEditHypernetwork",
    "SubspaceError",
    "get_fingerprint_model",
    "inject",
    "train_rledit",
    "instruction_task",
    "math_accuracy",
    "math_task",
    "train_eval_split",
    "Fingerprint",
    "FingerprintError",
    "FingerprintFileError",
    "FingerprintSet",
    "FingerprintSetError",
    "ModelLoadError",
    "NearMiss",
    "PairOutcome",
    "UnsupportedArchitectureError",
    "VerificationReport",
    "load_model",
    "tiny_model",
    "verify",
]
