"""hf_fingerprint: edit-based fingerprints for open-weight LLMs.

Owners plant secret trigger -> target pairs by knowledge editing, keep them through fine-tuning with
FSFT, and prove ownership of a suspect model with a p-value.
"""

from .errors import (
    FingerprintError,
    FingerprintFileError,
    FingerprintSetError,
    ModelLoadError,
    UnsupportedArchitectureError,
)
from .fingerprints import Fingerprint, FingerprintSet, NearMiss
from .models import EMBEDDED_MODEL, load_model, tiny_model
from .verification import PairOutcome, VerificationReport, verify

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED_MODEL",
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
