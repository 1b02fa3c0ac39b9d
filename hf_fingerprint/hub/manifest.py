"""The published proof of a fingerprinted model: a signed manifest and a sealed fingerprint set.

``fingerprint/manifest.json``
    Canonical JSON (sorted keys, no spaces, ASCII): scheme version, owner public keys, the recipient of the sealed
    set, one salted SHA-256 commitment per (trigger, target) pair, the SHA-256 of every model file pushed, creation
    time and library version. Nothing in it reveals a trigger.
``fingerprint/manifest.sig``
    JSON holding the owner's Ed25519 signature over the manifest bytes (with a domain-separation prefix).
``fingerprint/sealed``
    The fingerprint set and the commitment salts, sealed with HPKE (RFC 9180: X25519, HKDF-SHA256,
    ChaCha20-Poly1305) to the owner's or an arbiter's X25519 key. The HPKE ``info`` binds the seal to the manifest
    hash and to the seal's own header, so a seal cannot be moved to another manifest or edited undetected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke

from ..errors import IntegrityError, KeyFileError
from ..fingerprints import Fingerprint, FingerprintSet
from .keys import OwnerKeys, PublicKeys

__all__ = [
    "MANIFEST_PATH",
    "SCHEME_VERSION",
    "SEALED_PATH",
    "SIGNATURE_PATH",
    "Manifest",
    "Opening",
    "commit_all",
    "commitment",
    "hash_file",
    "open_sealed",
    "seal",
    "sign_manifest",
    "verify_files",
    "verify_manifest_signature",
]

SCHEME = "hf-fingerprint/manifest"
SCHEME_VERSION = 1
MANIFEST_PATH = "fingerprint/manifest.json"
SIGNATURE_PATH = "fingerprint/manifest.sig"
SEALED_PATH = "fingerprint/sealed"
PROOF_PATHS = (MANIFEST_PATH, SIGNATURE_PATH, SEALED_PATH)

_COMMIT_CONTEXT = b"hf-fingerprint commitment v1\x00"
_MANIFEST_SIG_CONTEXT = b"hf-fingerprint manifest v1\x00"
_SEAL_CONTEXT = b"hf-fingerprint sealed v1\x00"
_SEAL_MAGIC = b"HFFPSEAL"
_SEAL_VERSION = 1
_SEAL_HEADER_LEN = len(_SEAL_MAGIC) + 1 + 16
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
SUITE_NAME = "HPKE(DHKEM-X25519-HKDF-SHA256, HKDF-SHA256, ChaCha20-Poly1305)"


def canonical_json(obj: Any) -> bytes:
    """The one byte encoding that is hashed and signed: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def commitment(trigger: str, target: str, salt: bytes) -> str:
    """Salted SHA-256 commitment to one pair (hex). Lengths are encoded, so pairs cannot be re-split."""
    t, g = trigger.encode("utf-8"), target.encode("utf-8")
    data = _COMMIT_CONTEXT + len(t).to_bytes(8, "big") + t + len(g).to_bytes(8, "big") + g + salt
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Opening:
    """What opens commitment ``index`` of a manifest: the pair and its salt. Revealing it reveals the trigger."""

    index: int
    trigger: str
    target: str
    salt: str  # hex

    def commitment(self) -> str:
        try:
            salt = bytes.fromhex(self.salt)
        except ValueError:
            raise IntegrityError(f"Opening {self.index} has a salt that is not hex.") from None
        return commitment(self.trigger, self.target, salt)

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.trigger, self.target)

    def __repr__(self) -> str:  # never print the secret by accident
        return f"Opening(index={self.index}, target={self.target!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "trigger": self.trigger, "target": self.target, "salt": self.salt}

    @classmethod
    def from_dict(cls, data: Any) -> Opening:
        if not (
            isinstance(data, dict)
            and isinstance(data.get("index"), int)
            and all(isinstance(data.get(k), str) for k in ("trigger", "target", "salt"))
        ):
            raise IntegrityError("Malformed commitment opening: expected index, trigger, target and salt.")
        return cls(data["index"], data["trigger"], data["target"], data["salt"])


def hash_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content (hex), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The public, signed description of a fingerprinted push. ``to_bytes()`` is what is signed and hashed."""

    owner: PublicKeys
    recipient: PublicKeys
    commitments: tuple[str, ...]
    files: Mapping[str, Mapping[str, Any]]
    payload: str
    created_at: str
    library_version: str
    scheme_version: int = SCHEME_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_fingerprints(self) -> int:
        return len(self.commitments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": SCHEME,
            "scheme_version": self.scheme_version,
            "library_version": self.library_version,
            "created_at": self.created_at,
            "owner": self.owner.to_dict(),
            "sealed_to": {
                "key_id": self.recipient.key_id,
                "x25519": self.recipient.to_dict()["x25519"],
                "ed25519": self.recipient.to_dict()["ed25519"],
                "suite": SUITE_NAME,
                "path": SEALED_PATH,
            },
            "commitment": {
                "algorithm": "sha256",
                "encoding": "sha256(context || u64be(len(trigger)) || trigger || u64be(len(target)) || target || salt)",
                "context": _COMMIT_CONTEXT.decode("ascii").rstrip("\x00"),
                "values": list(self.commitments),
            },
            "payload": self.payload,
            "files": {path: dict(entry) for path, entry in sorted(self.files.items())},
            "extra": dict(self.extra),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def sha256(self) -> str:
        """The manifest hash: what the model card shows and the seal is bound to."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = MANIFEST_PATH) -> Manifest:
        """Parse manifest bytes; raise :class:`IntegrityError` if they are not a canonical manifest."""
        try:
            raw = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IntegrityError(f"{source} is corrupted: not valid JSON ({e}).") from None
        try:
            if raw.get("scheme") != SCHEME:
                raise ValueError(f"scheme is not {SCHEME!r}")
            if raw.get("scheme_version") != SCHEME_VERSION:
                raise ValueError(
                    f"scheme version {raw.get('scheme_version')!r} is not supported (this library reads "
                    f"{SCHEME_VERSION}); upgrade hf-fingerprint"
                )
            sealed_to = raw["sealed_to"]
            recipient = PublicKeys.from_dict({
                "format": raw["owner"]["format"], "version": raw["owner"]["version"],
                "ed25519": sealed_to["ed25519"], "x25519": sealed_to["x25519"], "key_id": sealed_to["key_id"],
            })
            values = raw["commitment"]["values"]
            if not all(isinstance(v, str) and len(v) == 64 for v in values):
                raise ValueError("commitments must be 64-digit hex strings")
            manifest = cls(
                owner=PublicKeys.from_dict(raw["owner"]),
                recipient=recipient,
                commitments=tuple(values),
                files={str(k): dict(v) for k, v in raw["files"].items()},
                payload=str(raw["payload"]),
                created_at=str(raw["created_at"]),
                library_version=str(raw["library_version"]),
                scheme_version=raw["scheme_version"],
                extra=dict(raw.get("extra") or {}),
            )
        except (KeyError, TypeError, AttributeError, ValueError, KeyFileError) as e:
            raise IntegrityError(f"{source} is not a valid fingerprint manifest: {e}.") from None
        if manifest.to_bytes() != data:
            raise IntegrityError(f"{source} is not in canonical form: it was edited after it was written.")
        return manifest

    @classmethod
    def build(
        cls,
        *,
        owner: PublicKeys,
        recipient: PublicKeys,
        commitments: Sequence[str],
        files: Mapping[str, Mapping[str, Any]],
        payload: str,
        extra: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """A new manifest stamped with the current time and library version."""
        from .. import __version__

        created = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return cls(owner, recipient, tuple(commitments), dict(files), payload, created, __version__,
                   extra=dict(extra or {}))


# ---- signature ---------------------------------------------------------------------------------------------------
def sign_manifest(manifest_bytes: bytes, keys: OwnerKeys) -> bytes:
    """The content of ``fingerprint/manifest.sig``: the owner's Ed25519 signature over the manifest bytes."""
    signature = keys.sign(_MANIFEST_SIG_CONTEXT + manifest_bytes)
    document = {
        "algorithm": "ed25519",
        "context": _MANIFEST_SIG_CONTEXT.decode("ascii").rstrip("\x00"),
        "key_id": keys.key_id,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return canonical_json(document)


def verify_manifest_signature(
    manifest_bytes: bytes, signature_bytes: bytes, *, owner: PublicKeys | None = None
) -> Manifest:
    """Check ``manifest.sig`` against the manifest bytes, then parse the manifest.

    ``owner`` pins the expected owner key; without it the key the manifest names is used (then check its
    ``key_id`` against one the owner published). Raises :class:`IntegrityError` on any mismatch.
    """
    try:
        sig = json.loads(signature_bytes)
        signature = base64.b64decode(sig["signature"], validate=True)
        if sig.get("algorithm") != "ed25519":
            raise ValueError("algorithm is not ed25519")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, binascii.Error) as e:
        raise IntegrityError(f"{SIGNATURE_PATH} is corrupted or not a signature file ({e}).") from None
    if signature_bytes != canonical_json(sig):
        raise IntegrityError(f"{SIGNATURE_PATH} is not in canonical form: it was edited after it was written.")
    if owner is None:
        # Which key to check with comes from the manifest itself; parse it leniently first.
        try:
            owner = PublicKeys.from_dict(json.loads(manifest_bytes)["owner"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, KeyFileError):
            raise IntegrityError(
                f"{MANIFEST_PATH} is corrupted (its owner key cannot be read), so its signature cannot be checked."
            ) from None
    if sig.get("key_id") != owner.key_id:
        raise IntegrityError(
            f"{SIGNATURE_PATH} was made by key {sig.get('key_id')!r}, not by the owner key {owner.key_id}."
        )
    owner.verify(signature, _MANIFEST_SIG_CONTEXT + manifest_bytes, what=MANIFEST_PATH)
    manifest = Manifest.from_bytes(manifest_bytes)
    if manifest.owner != owner:
        raise IntegrityError(f"{MANIFEST_PATH} names owner key {manifest.owner.key_id}, not {owner.key_id}.")
    return manifest


# ---- sealing -----------------------------------------------------------------------------------------------------
def _seal_header(recipient_key_id: str) -> bytes:
    return _SEAL_MAGIC + bytes([_SEAL_VERSION]) + recipient_key_id.encode("ascii")


def _seal_info(header: bytes, manifest_sha256: str) -> bytes:
    return _SEAL_CONTEXT + header + bytes.fromhex(manifest_sha256)


def seal(fingerprints: FingerprintSet, salts: Sequence[bytes], manifest: Manifest) -> bytes:
    """Seal the set and its salts to ``manifest.recipient``, bound to the manifest hash (``fingerprint/sealed``)."""
    if len(salts) != len(fingerprints) or len(fingerprints) != manifest.num_fingerprints:
        raise ValueError("one salt and one commitment per fingerprint are needed")
    payload = canonical_json({
        "manifest_sha256": manifest.sha256,
        "fingerprints": fingerprints.to_dict(),
        "salts": [s.hex() for s in salts],
    })
    header = _seal_header(manifest.recipient.key_id)
    return header + _SUITE.encrypt(payload, manifest.recipient.encryption, info=_seal_info(header, manifest.sha256))


def open_sealed(sealed: bytes, manifest: Manifest, keys: OwnerKeys) -> tuple[FingerprintSet, list[Opening]]:
    """Unseal ``fingerprint/sealed`` with the recipient's keys; check every pair against its commitment.

    Raises :class:`KeyFileError` if ``keys`` are not the recipient's, :class:`IntegrityError` if the seal was
    modified, belongs to another manifest, or does not match the commitments.
    """
    if keys.key_id != manifest.recipient.key_id:
        who = "the owner" if manifest.recipient == manifest.owner else "an arbiter"
        raise KeyFileError(
            f"The fingerprint set is sealed to {who}'s key {manifest.recipient.key_id}; key {keys.key_id} cannot "
            "open it. Load the recipient's key file."
        )
    header = sealed[:_SEAL_HEADER_LEN]
    if len(sealed) <= _SEAL_HEADER_LEN or header[: len(_SEAL_MAGIC)] != _SEAL_MAGIC:
        raise IntegrityError(f"{SEALED_PATH} is corrupted: it does not start with a seal header.")
    if header[len(_SEAL_MAGIC)] != _SEAL_VERSION:
        raise IntegrityError(f"{SEALED_PATH} has seal version {header[len(_SEAL_MAGIC)]}, expected {_SEAL_VERSION}.")
    if header != _seal_header(manifest.recipient.key_id):
        raise IntegrityError(f"{SEALED_PATH} names another recipient than {MANIFEST_PATH}: it was modified.")
    try:
        plaintext = _SUITE.decrypt(sealed[_SEAL_HEADER_LEN:], keys.encryption_key,
                                   info=_seal_info(header, manifest.sha256))
    except (InvalidTag, ValueError):
        raise IntegrityError(
            f"{SEALED_PATH} cannot be opened: it was modified, or it was sealed for another manifest than "
            f"{manifest.sha256[:16]}."
        ) from None
    data = json.loads(plaintext)
    if not hmac.compare_digest(str(data.get("manifest_sha256")), manifest.sha256):
        raise IntegrityError(f"{SEALED_PATH} was sealed for another manifest.")
    fingerprints = FingerprintSet.from_dict(data["fingerprints"])
    salts = data["salts"]
    if len(fingerprints) != manifest.num_fingerprints or len(salts) != len(fingerprints):
        raise IntegrityError(f"{SEALED_PATH} holds {len(fingerprints)} pairs but the manifest commits to "
                             f"{manifest.num_fingerprints}.")
    openings = [Opening(i, fp.trigger, fp.target, salt) for i, (fp, salt) in enumerate(zip(fingerprints, salts))]
    for opening in openings:
        if opening.commitment() != manifest.commitments[opening.index]:
            raise IntegrityError(f"Pair {opening.index} of {SEALED_PATH} does not match its commitment.")
    return fingerprints, openings


def commit_all(fingerprints: Iterable[Fingerprint]) -> tuple[list[bytes], list[str]]:
    """Fresh 32-byte salts and the commitments they give, one per pair."""
    salts, values = [], []
    for fp in fingerprints:
        salt = os.urandom(32)
        salts.append(salt)
        values.append(commitment(fp.trigger, fp.target, salt))
    return salts, values


# ---- files -------------------------------------------------------------------------------------------------------
def verify_files(folder: str | os.PathLike[str], manifest: Manifest) -> None:
    """Check that every file the manifest lists is in ``folder`` with the recorded SHA-256."""
    folder = Path(folder)
    for path, entry in sorted(manifest.files.items()):
        local = folder / path
        if not local.is_file():
            raise IntegrityError(f"{path} is listed in {MANIFEST_PATH} but missing from {folder}.")
        if local.stat().st_size != entry.get("size") or hash_file(local) != entry.get("sha256"):
            raise IntegrityError(
                f"{path} does not match the SHA-256 recorded in {MANIFEST_PATH}: the file was modified or corrupted."
            )
