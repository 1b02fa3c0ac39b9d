"""The Hub workflow: owner keys, pushing a fingerprinted model with a signed manifest and a sealed fingerprint set,
pulling and checking suspects, and verifying the signed reports.

Works with any Hub-compatible endpoint: the real Hub, or :class:`hf_fingerprint.testing.LocalHub`.
"""

from ._hub import pull_suspect
from .check import Proof, check_suspect, load_proof, verify_repo
from .keys import OwnerKeys, PublicKeys
from .manifest import Manifest, Opening
from .push import push_fingerprinted, render_model_card
from .report import OwnershipReport, verify_report

__all__ = [
    "Manifest",
    "Opening",
    "OwnerKeys",
    "OwnershipReport",
    "Proof",
    "PublicKeys",
    "check_suspect",
    "load_proof",
    "pull_suspect",
    "push_fingerprinted",
    "render_model_card",
    "verify_report",
    "verify_repo",
]
