"""Checking a suspect model against an owner's fingerprints, and checking a published repo's files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import HubError, IntegrityError, ModelLoadError
from ..fingerprints import FingerprintSet
from ._hub import pull_suspect
from .keys import OwnerKeys, PublicKeys
from .manifest import (
    MANIFEST_PATH,
    PROOF_PATHS,
    SEALED_PATH,
    SIGNATURE_PATH,
    Manifest,
    Opening,
    hash_file,
    open_sealed,
    verify_files,
    verify_manifest_signature,
)
from .report import OwnershipReport

__all__ = ["Proof", "check_suspect", "load_proof", "verify_repo"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class Proof:
    """An owner repo's verified manifest and its sealed fingerprint set."""

    manifest: Manifest
    sealed: bytes
    repo: str
    revision: str | None  # commit sha; None for a local folder


def load_proof(
    owner_repo: str | os.PathLike[str],
    *,
    owner_key: PublicKeys | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> Proof:
    """Fetch ``fingerprint/*`` of an owner repo (Hub id or local folder) and verify the manifest signature.

    Raises :class:`IntegrityError` if the manifest or its signature was modified, or was signed by a key other
    than ``owner_key`` (when given).
    """
    folder, sha = _locate(owner_repo, revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir,
                          allow_patterns=["fingerprint/*"])
    manifest = _verified_manifest(folder, owner_repo, owner_key)
    return Proof(manifest, (folder / SEALED_PATH).read_bytes(), str(owner_repo), sha)


def _verified_manifest(folder: Path, name: Any, owner_key: PublicKeys | None) -> Manifest:
    missing = [p for p in PROOF_PATHS if not (folder / p).is_file()]
    if missing:
        raise IntegrityError(f"{name} has no fingerprint proof: {', '.join(missing)} missing.")
    return verify_manifest_signature(
        (folder / MANIFEST_PATH).read_bytes(), (folder / SIGNATURE_PATH).read_bytes(), owner=owner_key
    )


def verify_repo(
    repo_id_or_path: str | os.PathLike[str],
    *,
    owner_key: PublicKeys | None = None,
    key_id: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> Manifest:
    """Check a published fingerprinted repo: manifest signature, then the SHA-256 of every file it lists.

    Pin the owner with ``owner_key`` or with the ``key_id`` shown in the model card. Returns the manifest;
    raises :class:`IntegrityError` naming the first file that does not match.
    """
    folder, _ = _locate(repo_id_or_path, revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir)
    manifest = _verified_manifest(folder, repo_id_or_path, owner_key)
    if key_id is not None and manifest.owner.key_id != key_id:
        raise IntegrityError(f"The manifest is signed by key {manifest.owner.key_id}, not by {key_id}.")
    verify_files(folder, manifest)
    return manifest


def check_suspect(
    repo_id_or_path: str | os.PathLike[str],
    *,
    keys: OwnerKeys | None = None,
    fingerprints: FingerprintSet | str | os.PathLike[str] | None = None,
    owner_repo: str | os.PathLike[str] | None = None,
    owner_key: PublicKeys | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    owner_revision: str | None = None,
    cache_dir: str | Path | None = None,
    pairs: Sequence[int] | None = None,
    base_model: str | os.PathLike[str] | None = None,
    alpha: float = 1e-6,
    match: str = "contains",
    system_prompt: str | None = None,
    num_samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int | None = None,
    ordinary_prompts: Sequence[str] | None = None,
    dtype: Any = None,
    device: Any = None,
    progress: bool = True,
) -> OwnershipReport:
    """Query a suspect model (Hub id or local folder) with the owner's fingerprints; return a signed report.

    The fingerprints come either from ``fingerprints`` (a set or its file), or from ``owner_repo``: its manifest
    signature is checked (against ``owner_key`` if given), then ``fingerprint/sealed`` is opened with ``keys`` and
    every pair is checked against its commitment. ``pairs`` limits the check (and the openings in the report) to
    some pair indices, keeping the others secret. The report is signed with ``keys`` when given. A model folder
    holding only an adapter needs ``base_model``. The claim holds when the p-value is below ``alpha``.
    """
    if fingerprints is not None and owner_repo is not None:
        raise HubError("Pass either fingerprints or owner_repo (with keys), not both.")
    proof: Proof | None = None
    openings: list[Opening] = []
    if owner_repo is not None:
        if keys is None:
            raise HubError("Opening the sealed fingerprints of owner_repo needs the recipient's keys (keys=...).")
        proof = load_proof(owner_repo, owner_key=owner_key, revision=owner_revision, endpoint=endpoint,
                           token=token, cache_dir=cache_dir)
        fps, openings = open_sealed(proof.sealed, proof.manifest, keys)
    elif fingerprints is not None:
        fps = fingerprints if isinstance(fingerprints, FingerprintSet) else FingerprintSet.load(fingerprints)
    else:
        raise HubError("Give the fingerprints to check: fingerprints=..., or owner_repo=... with keys=....")

    indices = list(range(len(fps))) if pairs is None else sorted(set(int(i) for i in pairs))
    if not indices or indices[0] < 0 or indices[-1] >= len(fps):
        raise HubError(f"pairs must be indices in [0, {len(fps)}), got {list(pairs or [])}.")
    used = FingerprintSet([fps[i] for i in indices], style=fps.style, target_vocabulary=fps.target_vocabulary)

    folder, sha = _locate(repo_id_or_path, revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir)
    model, tokenizer = _load_suspect(folder, base_model=base_model, dtype=dtype, device=device)

    from ..verification import verify

    result = verify(
        model, tokenizer, used, match=match, system_prompt=system_prompt, num_samples=num_samples,
        temperature=temperature, max_new_tokens=max_new_tokens, ordinary_prompts=ordinary_prompts,
        progress=progress,
    )
    outcomes = [
        {
            "index": indices[o.index],
            "id": o.id,
            "target": o.target,
            "matched": o.matched,
            "success_rate": o.success_rate,
            "null_probability": o.null_probability,
            "response": shown,
        }
        for o, shown in zip(result.outcomes, result.redacted_responses)
    ]
    is_local = Path(repo_id_or_path).is_dir()
    suspect = {
        "repo": None if is_local else str(repo_id_or_path),
        "path": str(folder) if is_local else None,
        "revision": sha,
        "endpoint": None if is_local else _endpoint_of(endpoint),
        "weights_sha256": _weight_hashes(folder, progress=progress),
    }
    owner = None
    if proof is not None:
        owner = {
            "repo": proof.repo,
            "revision": proof.revision,
            "manifest_sha256": proof.manifest.sha256,
            "key_id": proof.manifest.owner.key_id,
            "commitments": {str(i): proof.manifest.commitments[i] for i in indices},
        }
    from .. import __version__

    report = OwnershipReport(
        suspect=suspect,
        owner=owner,
        fsr=result.fsr,
        p_value=result.p_value,
        matched=result.matched,
        total=result.total,
        matched_indices=[o["index"] for o in outcomes if o["matched"]],
        alpha=alpha,
        claimed=result.p_value < alpha,
        null_model=result.null_model,
        outcomes=outcomes,
        openings=[openings[i] for i in indices] if openings else [],
        settings=dict(result.settings),
        created_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        library_version=__version__,
    )
    if keys is not None:
        report.sign(keys)
    return report


def _locate(
    repo_id_or_path: str | os.PathLike[str],
    *,
    revision: str | None,
    endpoint: str | None,
    token: str | bool | None,
    cache_dir: str | Path | None,
    allow_patterns: Sequence[str] | None = None,
) -> tuple[Path, str | None]:
    """A local folder as is (no sha), or a Hub repo pulled at one commit."""
    path = Path(repo_id_or_path)
    if path.is_dir():
        return path, None
    if isinstance(repo_id_or_path, os.PathLike) or str(repo_id_or_path).startswith((".", "/", "~")):
        raise HubError(f"No such folder: {repo_id_or_path}.")
    return pull_suspect(str(repo_id_or_path), revision=revision, endpoint=endpoint, token=token,
                        cache_dir=cache_dir, allow_patterns=allow_patterns)


def _load_suspect(folder: Path, *, base_model: Any, dtype: Any, device: Any) -> tuple[Any, Any]:
    from ..models import load_model

    if (folder / "config.json").is_file():
        return load_model(folder, dtype=dtype, device=device)
    if not (folder / "adapter_config.json").is_file():
        raise HubError(f"{folder} holds neither a model (config.json) nor an adapter (adapter_config.json).")
    if base_model is None:
        raise HubError(f"{folder} holds only an adapter: pass base_model= (the model it was trained on).")
    from peft import PeftModel

    model, tokenizer = load_model(base_model, dtype=dtype, device=device)
    try:
        if (folder / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = PeftModel.from_pretrained(model, str(folder))
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"Could not load the adapter in {folder} on {base_model}: {e}") from None
    model.eval()
    return model, tokenizer


def _weight_hashes(folder: Path, *, progress: bool) -> dict[str, str]:
    """SHA-256 of the suspect's weight files, so the report names exactly what was checked."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return {p.relative_to(folder).as_posix(): hash_file(p)
            for p in tqdm(files, desc="hashing suspect weights", disable=not progress, leave=False)}


def _endpoint_of(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return endpoint or constants.ENDPOINT
