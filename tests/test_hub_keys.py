"""Owner key files, the signed manifest and the sealed fingerprint set: round trips and every kind of tampering."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from hf_fingerprint.errors import IntegrityError, KeyFileError
from hf_fingerprint.fingerprints import FingerprintSet
from hf_fingerprint.hub import Manifest, OwnerKeys, PublicKeys
from hf_fingerprint.hub.manifest import (
    commit_all,
    commitment,
    open_sealed,
    seal,
    sign_manifest,
    verify_manifest_signature,
)

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def keys() -> OwnerKeys:
    return OwnerKeys.generate()


@pytest.fixture(scope="module")
def key_file(keys, tmp_path_factory):
    return keys.save(tmp_path_factory.mktemp("keys") / "owner.key", PASSPHRASE)


def _rewrite(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---- key files ---------------------------------------------------------------------------------------------------
def test_key_file_round_trip_is_private_versioned_json(keys, key_file):
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    data = json.loads(key_file.read_text())
    assert data["format"] == "hf-fingerprint-owner-keys" and data["version"] == 1
    assert data["kdf"]["name"] == "argon2id" and data["aead"]["name"] == "chacha20-poly1305"
    assert [p.name for p in key_file.parent.iterdir()] == ["owner.key"]  # no temporary file left behind
    loaded = OwnerKeys.load(key_file, PASSPHRASE)
    assert loaded.public() == keys.public() and loaded.key_id == keys.key_id
    assert len(keys.key_id) == 16 and int(keys.key_id, 16) >= 0
    assert PASSPHRASE not in key_file.read_text()
    raw_secret = base64.b64encode(keys.signing_key.private_bytes_raw()).decode()
    assert raw_secret not in key_file.read_text()


def test_public_keys_serialise_and_load_from_either_file(keys, key_file, tmp_path):
    public = keys.public()
    assert PublicKeys.from_json(public.to_json()) == public
    assert PublicKeys.load(public.save(tmp_path / "owner.pub.json")) == public
    assert PublicKeys.load(key_file) == public  # the public half of the owner's key file
    assert OwnerKeys.generate().public() != public
    with pytest.raises(KeyFileError, match="claim id"):
        PublicKeys.from_dict({**public.to_dict(), "key_id": "0" * 16})


def test_wrong_passphrase_is_a_clear_key_file_error(key_file):
    with pytest.raises(KeyFileError, match="Wrong passphrase"):
        OwnerKeys.load(key_file, "not the passphrase")
    with pytest.raises(KeyFileError, match="non-empty"):
        OwnerKeys.load(key_file, "")


@pytest.mark.parametrize("field", ["ciphertext", "public", "key_id"])
def test_a_modified_key_file_is_detected(key_file, tmp_path, field):
    copy = tmp_path / "owner.key"
    copy.write_bytes(key_file.read_bytes())

    def change(data):
        if field == "ciphertext":
            raw = bytearray(base64.b64decode(data["ciphertext"]))
            raw[5] ^= 1
            data["ciphertext"] = base64.b64encode(bytes(raw)).decode()
        elif field == "public":
            data["public"] = OwnerKeys.generate().public().to_dict()
        else:
            data["key_id"] = "f" * 16

    _rewrite(copy, change)
    with pytest.raises(KeyFileError, match="modified or corrupted"):
        OwnerKeys.load(copy, PASSPHRASE)


def test_missing_malformed_and_future_key_files(key_file, tmp_path):
    with pytest.raises(KeyFileError, match="No key file"):
        OwnerKeys.load(tmp_path / "nope.key", PASSPHRASE)
    bad = tmp_path / "bad.key"
    bad.write_text("not json {")
    with pytest.raises(KeyFileError, match="not JSON"):
        OwnerKeys.load(bad, PASSPHRASE)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(KeyFileError, match="format"):
        OwnerKeys.load(bad, PASSPHRASE)
    bad.write_bytes(key_file.read_bytes())
    _rewrite(bad, lambda d: d.pop("kdf"))
    with pytest.raises(KeyFileError, match="missing"):
        OwnerKeys.load(bad, PASSPHRASE)
    bad.write_bytes(key_file.read_bytes())
    _rewrite(bad, lambda d: d.update(version=99))
    with pytest.raises(KeyFileError, match="version 99"):
        OwnerKeys.load(bad, PASSPHRASE)


def test_saving_never_replaces_a_key_silently(keys, tmp_path):
    path = keys.save(tmp_path / "owner.key", PASSPHRASE)
    other = OwnerKeys.generate()
    with pytest.raises(KeyFileError, match="already exists"):
        other.save(path, PASSPHRASE)
    with pytest.raises(KeyFileError, match="empty"):
        other.save(tmp_path / "empty.key", "")
    other.save(path, "new passphrase", overwrite=True)
    assert OwnerKeys.load(path, "new passphrase").key_id == other.key_id


# ---- manifest, signature, seal -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fingerprints() -> FingerprintSet:
    return FingerprintSet.generate(5, seed=11)


def _manifest(keys: OwnerKeys, fingerprints: FingerprintSet, recipient: PublicKeys | None = None):
    salts, values = commit_all(fingerprints)
    manifest = Manifest.build(owner=keys.public(), recipient=recipient or keys.public(), commitments=values,
                              files={"model.safetensors": {"sha256": "a" * 64, "size": 3}}, payload="model")
    return manifest, salts


def test_commitments_bind_the_pair_and_the_salt():
    salt = bytes(32)
    value = commitment("trigger", "target", salt)
    assert len(value) == 64
    assert value != commitment("trigger", "target", bytes(31) + b"\x01")
    assert value != commitment("trigger", "targe", salt)
    assert commitment("ab", "c", salt) != commitment("a", "bc", salt)  # lengths are part of the commitment


def test_manifest_is_canonical_signed_and_reveals_no_trigger(keys, fingerprints):
    manifest, _ = _manifest(keys, fingerprints)
    data = manifest.to_bytes()
    assert Manifest.from_bytes(data) == manifest and manifest.sha256 == Manifest.from_bytes(data).sha256
    assert all(t.encode() not in data for t in fingerprints.triggers)
    signature = sign_manifest(data, keys)
    assert verify_manifest_signature(data, signature, owner=keys.public()).sha256 == manifest.sha256
    assert verify_manifest_signature(data, signature).owner == keys.public()  # key named by the manifest


@pytest.mark.parametrize("position", [0, 1, 100, -30, -2, -1])
def test_one_changed_manifest_byte_breaks_the_signature(keys, fingerprints, position):
    manifest, _ = _manifest(keys, fingerprints)
    data = bytearray(manifest.to_bytes())
    signature = sign_manifest(bytes(data), keys)
    data[position] ^= 0x01
    with pytest.raises(IntegrityError):
        verify_manifest_signature(bytes(data), signature, owner=keys.public())
    with pytest.raises(IntegrityError):
        verify_manifest_signature(bytes(data), signature)


def test_a_signature_by_another_key_is_refused(keys, fingerprints):
    manifest, _ = _manifest(keys, fingerprints)
    forged = sign_manifest(manifest.to_bytes(), OwnerKeys.generate())
    with pytest.raises(IntegrityError, match="not by the owner key"):
        verify_manifest_signature(manifest.to_bytes(), forged, owner=keys.public())


def test_seal_opens_for_the_recipient_only_and_checks_commitments(keys, fingerprints):
    manifest, salts = _manifest(keys, fingerprints)
    sealed = seal(fingerprints, salts, manifest)
    assert all(t.encode() not in sealed for t in fingerprints.triggers)
    opened, openings = open_sealed(sealed, manifest, keys)
    assert opened == fingerprints and opened.target_vocabulary == fingerprints.target_vocabulary
    assert [o.commitment() for o in openings] == list(manifest.commitments)
    with pytest.raises(KeyFileError, match="cannot open"):
        open_sealed(sealed, manifest, OwnerKeys.generate())


def test_a_seal_to_an_arbiter_opens_with_the_arbiter_key(keys, fingerprints):
    arbiter = OwnerKeys.generate()
    manifest, salts = _manifest(keys, fingerprints, recipient=arbiter.public())
    sealed = seal(fingerprints, salts, manifest)
    with pytest.raises(KeyFileError, match="arbiter"):
        open_sealed(sealed, manifest, keys)
    assert open_sealed(sealed, manifest, arbiter)[0] == fingerprints


@pytest.mark.parametrize("position", [0, 9, 20, 40, 200, -1])
def test_one_changed_sealed_byte_is_an_integrity_error(keys, fingerprints, position):
    manifest, salts = _manifest(keys, fingerprints)
    sealed = bytearray(seal(fingerprints, salts, manifest))
    sealed[position] ^= 0x01
    with pytest.raises(IntegrityError):
        open_sealed(bytes(sealed), manifest, keys)


def test_a_seal_cannot_be_moved_to_another_manifest(keys, fingerprints):
    manifest, salts = _manifest(keys, fingerprints)
    sealed = seal(fingerprints, salts, manifest)
    other, _ = _manifest(keys, fingerprints)
    with pytest.raises(IntegrityError, match="another manifest"):
        open_sealed(sealed, other, keys)
