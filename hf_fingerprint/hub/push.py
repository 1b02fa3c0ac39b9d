"""Pushing a fingerprinted model to the Hub in one commit, with its signed manifest and sealed fingerprint set."""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import HubError
from ..fingerprints import FingerprintSet
from ._hub import hub_errors
from .keys import OwnerKeys, PublicKeys
from .manifest import (
    MANIFEST_PATH,
    SCHEME_VERSION,
    SEALED_PATH,
    SIGNATURE_PATH,
    Manifest,
    commit_all,
    hash_file,
    seal,
    sign_manifest,
)

__all__ = ["push_fingerprinted", "render_model_card", "MODEL_CARD_TEMPLATE"]

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "fingerprinted_model_card.md"
AUTO_TAG = "auto"
_SKIPPED_NAMES = {"README.md"}


def push_fingerprinted(
    model: Any,
    tokenizer: Any,
    repo_id: str,
    fingerprints: FingerprintSet | str | os.PathLike[str],
    keys: OwnerKeys,
    *,
    endpoint: str | None = None,
    token: str | bool | None = None,
    private: bool = True,
    adapter_only: bool = False,
    arbiter: PublicKeys | str | os.PathLike[str] | None = None,
    revision_tag: str | None = AUTO_TAG,
    commit_message: str | None = None,
    progress: bool = True,
) -> str:
    """Push a fingerprinted model to ``repo_id`` in one commit and tag it; return the commit sha.

    The commit holds the model (merged weights, or only the fingerprint adapter with ``adapter_only``), a README
    with public fingerprint metadata, and ``fingerprint/{manifest.json, manifest.sig, sealed}``. The set is sealed
    to ``arbiter``'s public key if given, else to the owner's. ``model`` may also be a folder of saved files,
    pushed as they are. Files already in the repo and not written by this push are kept.
    ``revision_tag="auto"`` tags ``fingerprint-<manifest hash prefix>``; ``None`` skips the tag.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    fps = _as_fingerprint_set(fingerprints)
    if not isinstance(keys, OwnerKeys):
        raise HubError("keys must be OwnerKeys (load them with OwnerKeys.load(path, passphrase)).")
    recipient = _as_public_keys(arbiter) if arbiter is not None else keys.public()
    if "/" not in repo_id:
        raise HubError(f"repo_id must be 'namespace/name', got {repo_id!r}.")

    with _model_files(model, tokenizer, adapter_only=adapter_only) as (folder, files):
        hashes = {
            rel: {"sha256": hash_file(folder / rel), "size": (folder / rel).stat().st_size}
            for rel in tqdm(files, desc="hashing model files", disable=not progress, leave=False)
        }
        salts, commitments = commit_all(fps)
        manifest = Manifest.build(
            owner=keys.public(), recipient=recipient, commitments=commitments, files=hashes,
            payload="adapter" if adapter_only else "model", extra={"repo_id": repo_id},
        )
        tag = f"fingerprint-{manifest.sha256[:12]}" if revision_tag == AUTO_TAG else revision_tag
        manifest_bytes = manifest.to_bytes()
        readme = render_model_card(manifest, repo_id=repo_id, revision_tag=tag)
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel in files]
        operations += [
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme.encode("utf-8")),
            CommitOperationAdd(path_in_repo=MANIFEST_PATH, path_or_fileobj=manifest_bytes),
            CommitOperationAdd(path_in_repo=SIGNATURE_PATH, path_or_fileobj=sign_manifest(manifest_bytes, keys)),
            CommitOperationAdd(path_in_repo=SEALED_PATH, path_or_fileobj=seal(fps, salts, manifest)),
        ]
        api = HfApi(endpoint=endpoint, token=token)
        where = f"{repo_id} on {api.endpoint}"
        with hub_errors(f"Pushing to {where}"):
            api.create_repo(repo_id, private=private, exist_ok=True)
            parent = api.model_info(repo_id).sha
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message or f"Fingerprinted model ({len(fps)} fingerprints, key {keys.key_id})",
                commit_description=f"Manifest SHA-256: {manifest.sha256}",
                parent_commit=parent,
            )
        if tag:
            with hub_errors(f"Tagging {tag!r} on {where}"):
                api.create_tag(repo_id, tag=tag, revision=info.oid,
                               tag_message=f"hf-fingerprint manifest {manifest.sha256}")
    return info.oid


def render_model_card(manifest: Manifest, *, repo_id: str, revision_tag: str | None = None) -> str:
    """The README: public metadata in its YAML (scheme, manifest hash, count, key ids), nothing secret."""
    from huggingface_hub import ModelCard, ModelCardData

    metadata = {
        "scheme_version": SCHEME_VERSION,
        "manifest_sha256": manifest.sha256,
        "num_fingerprints": manifest.num_fingerprints,
        "key_id": manifest.owner.key_id,
        "sealed_to": manifest.recipient.key_id,
        "payload": manifest.payload,
        "revision_tag": revision_tag,
    }
    card_data = ModelCardData(
        library_name="peft" if manifest.payload == "adapter" else "transformers",
        tags=["hf-fingerprint", "fingerprinted"],
        hf_fingerprint=metadata,
    )
    card = ModelCard.from_template(
        card_data, template_path=str(MODEL_CARD_TEMPLATE), repo_id=repo_id, model_name=repo_id.split("/")[-1]
    )
    return str(card)


def _as_fingerprint_set(fingerprints: Any) -> FingerprintSet:
    if isinstance(fingerprints, FingerprintSet):
        return fingerprints
    if isinstance(fingerprints, (str, os.PathLike)):
        return FingerprintSet.load(fingerprints)
    return FingerprintSet(fingerprints)


def _as_public_keys(value: PublicKeys | OwnerKeys | str | os.PathLike[str]) -> PublicKeys:
    if isinstance(value, PublicKeys):
        return value
    if isinstance(value, OwnerKeys):
        return value.public()
    return PublicKeys.load(value)


@contextmanager
def _model_files(model: Any, tokenizer: Any, *, adapter_only: bool) -> Iterator[tuple[Path, list[str]]]:
    """A folder with the files to push and their relative paths (README and ``fingerprint/`` excluded)."""
    if isinstance(model, (str, os.PathLike)):
        folder = Path(model)
        marker = "adapter_config.json" if adapter_only else "config.json"
        if not (folder / marker).is_file():
            raise HubError(f"{folder} is not a saved {'adapter' if adapter_only else 'model'} folder (no {marker}).")
        yield folder, _list_files(folder)
        return
    with tempfile.TemporaryDirectory(prefix="hf_fingerprint_push_") as tmp:
        folder = Path(tmp)
        is_peft = hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")
        if adapter_only:
            if not is_peft:
                raise HubError("adapter_only=True needs a PEFT model that holds the fingerprint adapter.")
            model.save_pretrained(folder)
        elif is_peft:
            copy.deepcopy(model).merge_and_unload().save_pretrained(folder)
        else:
            model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        yield folder, _list_files(folder)


def _list_files(folder: Path) -> list[str]:
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel in _SKIPPED_NAMES or rel.startswith("fingerprint/"):
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # .cache/ from local_dir downloads, .git, editor files
        files.append(rel)
    if not files:
        raise HubError(f"No model files to push in {folder}.")
    return files
