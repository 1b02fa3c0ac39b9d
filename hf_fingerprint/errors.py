"""Exceptions raised by hf_fingerprint. Every message says what went wrong and what to do."""

from __future__ import annotations


class FingerprintError(Exception):
    """Base class of every error this library raises on bad input or state."""


class ModelLoadError(FingerprintError):
    """A model or tokenizer could not be found or loaded."""


class UnsupportedArchitectureError(FingerprintError):
    """The model's architecture has no layout this library knows how to edit."""


class FingerprintSetError(FingerprintError):
    """A fingerprint set is empty, malformed or inconsistent."""


class FingerprintFileError(FingerprintSetError):
    """A fingerprint file is missing, not JSON, or of an unknown format version."""


class InjectionError(FingerprintError):
    """An edit could not be computed or applied."""


class SubspaceError(FingerprintError):
    """A fingerprint subspace for FSFT could not be built from what was given."""


class EvaluationError(FingerprintError):
    """A model modification or an evaluation measure could not be computed from what was given."""


class HubError(FingerprintError):
    """A Hub push, pull or check failed."""


class IntegrityError(HubError):
    """A signed or sealed file does not match what was published (tampering or corruption)."""


class KeyFileError(FingerprintError):
    """An owner key file is missing, malformed, or the passphrase is wrong."""
