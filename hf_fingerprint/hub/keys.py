"""Owner keys: an Ed25519 signing key and an X25519 encryption key, kept in one passphrase-protected file.

The key file is versioned JSON. The private keys are encrypted with ChaCha20-Poly1305 under a key derived from the
passphrase with Argon2id (RFC 9106 second recommended parameters); every other field of the file is bound to the
ciphertext as associated data, so any change to the file is detected. A short check value derived from the
passphrase tells a wrong passphrase apart from a modified file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..errors import IntegrityError, KeyFileError
from ..fingerprints import atomic_write

__all__ = ["OwnerKeys", "PublicKeys", "KEY_FILE_FORMAT", "PUBLIC_KEY_FORMAT"]

KEY_FILE_FORMAT = "hf-fingerprint-owner-keys"
PUBLIC_KEY_FORMAT = "hf-fingerprint-public-keys"
KEY_FILE_VERSION = 1
_KEY_ID_CONTEXT = b"hf-fingerprint key-id v1\x00"
_CHECK_CONTEXT = b"hf-fingerprint passphrase-check v1\x00"
# RFC 9106, second recommended option: t=3, m=64 MiB, p=4.
_ARGON2_DEFAULTS = {"iterations": 3, "lanes": 4, "memory_cost": 64 * 1024}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(f"{what} is not valid base64") from e


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _raw(key: Ed25519PublicKey | X25519PublicKey | Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    if isinstance(key, (Ed25519PrivateKey, X25519PrivateKey)):
        return key.private_bytes_raw()
    return key.public_bytes_raw()


@dataclass(frozen=True, eq=False)
class PublicKeys:
    """The shareable half of :class:`OwnerKeys`: verifies signatures and seals data to the owner."""

    signing: Ed25519PublicKey
    encryption: X25519PublicKey

    @property
    def key_id(self) -> str:
        """Short printable id: the first 16 hex digits of a SHA-256 over both public keys."""
        digest = hashlib.sha256(_KEY_ID_CONTEXT + _raw(self.signing) + _raw(self.encryption)).hexdigest()
        return digest[:16]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKeys):
            return NotImplemented
        return _raw(self.signing) == _raw(other.signing) and _raw(self.encryption) == _raw(other.encryption)

    def __hash__(self) -> int:
        return hash((_raw(self.signing), _raw(self.encryption)))

    def __repr__(self) -> str:
        return f"PublicKeys(key_id={self.key_id!r})"

    def verify(self, signature: bytes, message: bytes, *, what: str = "data") -> None:
        """Check an Ed25519 signature; raise :class:`IntegrityError` naming ``what`` if it does not match."""
        try:
            self.signing.verify(signature, message)
        except InvalidSignature:
            raise IntegrityError(
                f"The signature on {what} does not verify with key {self.key_id}: the {what} was modified after "
                "signing, or was signed by another key."
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PUBLIC_KEY_FORMAT,
            "version": KEY_FILE_VERSION,
            "key_id": self.key_id,
            "ed25519": _b64(_raw(self.signing)),
            "x25519": _b64(_raw(self.encryption)),
        }

    @classmethod
    def from_dict(cls, data: Any) -> PublicKeys:
        """Parse :meth:`to_dict` output; raise :class:`KeyFileError` if malformed or if its ``key_id`` disagrees."""
        try:
            if not isinstance(data, dict) or data.get("format") != PUBLIC_KEY_FORMAT:
                raise ValueError(f"format is not {PUBLIC_KEY_FORMAT!r}")
            if data.get("version") != KEY_FILE_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r} (this library reads {KEY_FILE_VERSION})")
            keys = cls(
                Ed25519PublicKey.from_public_bytes(_unb64(data.get("ed25519"), "ed25519")),
                X25519PublicKey.from_public_bytes(_unb64(data.get("x25519"), "x25519")),
            )
        except ValueError as e:
            raise KeyFileError(f"Malformed public keys: {e}.") from None
        if "key_id" in data and data["key_id"] != keys.key_id:
            raise KeyFileError(f"Public keys claim id {data['key_id']!r} but their id is {keys.key_id!r}.")
        return keys

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> PublicKeys:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise KeyFileError(f"Public keys are not valid JSON: {e}.") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the public keys as JSON (not secret)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (self.to_json() + "\n").encode(), mode=0o644)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKeys:
        """Read public keys saved by :meth:`save`, or take the public half of an owner key file."""
        path = Path(path)
        if not path.is_file():
            raise KeyFileError(f"No public key file at {path}.")
        data = _read_json(path)
        if isinstance(data, dict) and data.get("format") == KEY_FILE_FORMAT:
            data = data.get("public")
        return cls.from_dict(data)


class OwnerKeys:
    """A model owner's secret keys: Ed25519 signs manifests and reports, X25519 opens sealed fingerprint sets."""

    def __init__(self, signing_key: Ed25519PrivateKey, encryption_key: X25519PrivateKey):
        self.signing_key = signing_key
        self.encryption_key = encryption_key

    @classmethod
    def generate(cls) -> OwnerKeys:
        """Fresh random keys."""
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    def public(self) -> PublicKeys:
        """The shareable public keys."""
        return PublicKeys(self.signing_key.public_key(), self.encryption_key.public_key())

    @property
    def key_id(self) -> str:
        return self.public().key_id

    def __repr__(self) -> str:
        return f"OwnerKeys(key_id={self.key_id!r})"

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of ``message``."""
        return self.signing_key.sign(message)

    def save(self, path: str | os.PathLike[str], passphrase: str, *, overwrite: bool = False) -> Path:
        """Encrypt both private keys with ``passphrase`` into one JSON file (mode 0600, written atomically).

        Refuses to replace an existing file unless ``overwrite=True``: losing an owner key loses the proof.
        """
        path = Path(path)
        if not passphrase:
            raise KeyFileError("The passphrase must not be empty.")
        if path.exists() and not overwrite:
            raise KeyFileError(f"{path} already exists; pass overwrite=True to replace it (the old keys are lost).")
        salt, nonce = os.urandom(16), os.urandom(12)
        kdf = {"name": "argon2id", "salt": _b64(salt), **_ARGON2_DEFAULTS}
        derived = _derive(passphrase, kdf)
        header = {
            "format": KEY_FILE_FORMAT,
            "version": KEY_FILE_VERSION,
            "key_id": self.key_id,
            "public": self.public().to_dict(),
            "kdf": kdf,
            "aead": {"name": "chacha20-poly1305", "nonce": _b64(nonce)},
            "check": _check_value(derived),
        }
        secret = _canonical({"ed25519": _b64(_raw(self.signing_key)), "x25519": _b64(_raw(self.encryption_key))})
        ciphertext = ChaCha20Poly1305(derived[:32]).encrypt(nonce, secret, _canonical(header))
        document = {**header, "ciphertext": _b64(ciphertext)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(document, indent=2) + "\n").encode(), mode=0o600)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: str) -> OwnerKeys:
        """Decrypt a key file written by :meth:`save`.

        Raises :class:`KeyFileError` for a missing or malformed file, an unknown version, a wrong passphrase, or a
        file modified since it was written.
        """
        path = Path(path)
        if not path.is_file():
            raise KeyFileError(f"No key file at {path}: create one with `hf-fingerprint keygen`.")
        data = _read_json(path)
        try:
            if not isinstance(data, dict) or data.get("format") != KEY_FILE_FORMAT:
                raise ValueError(f"its format is not {KEY_FILE_FORMAT!r}")
            if data.get("version") != KEY_FILE_VERSION:
                raise ValueError(
                    f"version {data.get('version')!r} is not supported (this library reads version {KEY_FILE_VERSION})"
                )
            header = {k: data[k] for k in ("format", "version", "key_id", "public", "kdf", "aead", "check")}
            kdf, aead = header["kdf"], header["aead"]
            if not isinstance(kdf, dict) or kdf.get("name") != "argon2id":
                raise ValueError("unknown key derivation (expected argon2id)")
            if not isinstance(aead, dict) or aead.get("name") != "chacha20-poly1305":
                raise ValueError("unknown cipher (expected chacha20-poly1305)")
            nonce = _unb64(aead.get("nonce"), "aead.nonce")
            ciphertext = _unb64(data.get("ciphertext"), "ciphertext")
            derived = _derive(passphrase, kdf)
        except KeyError as e:
            raise KeyFileError(f"{path} is not a valid hf-fingerprint key file: field {e} is missing.") from None
        except (ValueError, TypeError) as e:
            raise KeyFileError(f"{path} is not a valid hf-fingerprint key file: {e}.") from None
        if not constant_time.bytes_eq(_check_value(derived).encode(), str(header["check"]).encode()):
            raise KeyFileError(f"Wrong passphrase for key file {path}.")
        try:
            secret = json.loads(ChaCha20Poly1305(derived[:32]).decrypt(nonce, ciphertext, _canonical(header)))
            keys = cls(
                Ed25519PrivateKey.from_private_bytes(_unb64(secret["ed25519"], "ed25519")),
                X25519PrivateKey.from_private_bytes(_unb64(secret["x25519"], "x25519")),
            )
        except (InvalidTag, ValueError, KeyError, TypeError):
            raise KeyFileError(
                f"Key file {path} was modified or corrupted after it was written (integrity check failed); "
                "restore it from a backup."
            ) from None
        if keys.key_id != header["key_id"]:
            raise KeyFileError(f"Key file {path} is inconsistent: its keys do not match its key id.")
        return keys


def _derive(passphrase: str, kdf: dict[str, Any]) -> bytes:
    """64 bytes from the passphrase: 32 for the cipher key, 32 for the passphrase check value."""
    if not isinstance(passphrase, str) or not passphrase:
        raise KeyFileError("The passphrase must be a non-empty string.")
    params = {k: kdf[k] for k in ("iterations", "lanes", "memory_cost")}
    if not all(isinstance(v, int) and v > 0 for v in params.values()):
        raise ValueError("key derivation parameters must be positive integers")
    if params["memory_cost"] > 4 * 1024 * 1024 or params["iterations"] > 64 or params["lanes"] > 64:
        raise ValueError("key derivation parameters are unreasonably large")
    salt = _unb64(kdf.get("salt"), "kdf.salt")
    return Argon2id(salt=salt, length=64, **params).derive(passphrase.encode("utf-8"))


def _check_value(derived: bytes) -> str:
    return hashlib.sha256(_CHECK_CONTEXT + derived[32:]).hexdigest()[:16]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path} is not a valid hf-fingerprint key file: not JSON ({e}).") from None
    except OSError as e:
        raise KeyFileError(f"Cannot read key file {path}: {e.strerror}.") from None
