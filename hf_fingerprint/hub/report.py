"""The signed ownership report of a suspect check, and how a third party verifies it."""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, KeyFileError
from .keys import OwnerKeys, PublicKeys
from .manifest import MANIFEST_PATH, SIGNATURE_PATH, Manifest, Opening, canonical_json, verify_manifest_signature

__all__ = ["OwnershipReport", "verify_report", "REPORT_FORMAT"]

REPORT_FORMAT = "hf-fingerprint/ownership-report"
REPORT_VERSION = 1
_REPORT_SIG_CONTEXT = b"hf-fingerprint ownership-report v1\x00"


@dataclass
class OwnershipReport:
    """What a suspect check found, which pairs it used (opened), and who signed it.

    ``openings`` reveal the triggers of the pairs used, so that anyone can recompute their commitments and
    compare them with the published manifest; :meth:`to_markdown` never prints them.
    """

    suspect: dict[str, Any]
    owner: dict[str, Any] | None
    fsr: float
    p_value: float
    matched: int
    total: int
    matched_indices: list[int]
    alpha: float
    claimed: bool
    null_model: str
    outcomes: list[dict[str, Any]]
    openings: list[Opening]
    settings: dict[str, Any]
    created_at: str
    library_version: str
    signer: dict[str, Any] | None = None
    signature: str | None = field(default=None, repr=False)

    # ---- serialisation ---------------------------------------------------------------------------------------
    def _body(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "suspect": self.suspect,
            "owner": self.owner,
            "fsr": self.fsr,
            "p_value": self.p_value,
            "matched": self.matched,
            "total": self.total,
            "matched_indices": list(self.matched_indices),
            "alpha": self.alpha,
            "claimed": self.claimed,
            "null_model": self.null_model,
            "outcomes": self.outcomes,
            "openings": [o.to_dict() for o in self.openings],
            "settings": self.settings,
            "created_at": self.created_at,
            "library_version": self.library_version,
            "signer": self.signer,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self._body(), "signature": self.signature}

    def to_json(self, *, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any) -> OwnershipReport:
        """Parse :meth:`to_dict` output; raise :class:`IntegrityError` if it is not a report."""
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise IntegrityError(f"Not an ownership report: expected a JSON object with format {REPORT_FORMAT!r}.")
        if data.get("version") != REPORT_VERSION:
            raise IntegrityError(f"Ownership report version {data.get('version')!r} is not supported.")
        try:
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k != "openings"}
            openings = [Opening.from_dict(o) for o in data["openings"]]
        except KeyError as e:
            raise IntegrityError(f"Ownership report is missing field {e}.") from None
        return cls(**fields, openings=openings)

    @classmethod
    def from_json(cls, text: str | bytes) -> OwnershipReport:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise IntegrityError(f"Ownership report is not valid JSON: {e}.") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (it holds opened triggers: share it only with whom should judge)."""
        from ..fingerprints import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (self.to_json() + "\n").encode("utf-8"), mode=0o600)
        return path

    # ---- signing ---------------------------------------------------------------------------------------------
    def sign(self, keys: OwnerKeys) -> OwnershipReport:
        """Sign the report with ``keys`` (Ed25519) in place; returns self."""
        self.signer = keys.public().to_dict()
        self.signature = base64.b64encode(keys.sign(_REPORT_SIG_CONTEXT + canonical_json(self._body()))).decode()
        return self

    # ---- display ---------------------------------------------------------------------------------------------
    def to_markdown(self) -> str:
        suspect = self.suspect.get("repo") or self.suspect.get("path")
        revision = self.suspect.get("revision")
        verdict = "**claimed**" if self.claimed else "**not claimed**"
        lines = [
            f"## Ownership check of `{suspect}`" + (f" @ `{revision[:12]}`" if revision else ""),
            "",
            f"Verdict: {verdict} (p-value {self.p_value:.3g} vs alpha {self.alpha:g}).",
            f"FSR {self.matched}/{self.total} ({100 * self.fsr:.0f} %); null model: {self.null_model}.",
        ]
        if self.owner:
            lines.append(
                f"Fingerprints from `{self.owner.get('repo')}` @ `{str(self.owner.get('revision'))[:12]}`, "
                f"manifest `{str(self.owner.get('manifest_sha256'))[:16]}`, owner key `{self.owner.get('key_id')}`."
            )
        lines.append(
            f"Signed by key `{self.signer.get('key_id')}`." if self.signer else "Unsigned (no keys were given)."
        )
        opened = {o.index for o in self.openings}
        lines += ["", "| pair | target | hit | answer | opened |", "|---|---|---|---|---|"]
        for outcome in self.outcomes:
            answer = str(outcome.get("response", "")).replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {outcome['index']} | {outcome['target']} | {'yes' if outcome['matched'] else 'no'} | {answer} | "
                f"{'yes' if outcome['index'] in opened else 'no'} |"
            )
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def verify_report(
    report: OwnershipReport | str | bytes | dict[str, Any] | os.PathLike[str],
    public_key: PublicKeys | OwnerKeys | str | os.PathLike[str],
    *,
    manifest: Manifest | str | os.PathLike[str] | None = None,
) -> bool:
    """Check a report's signature by ``public_key``, its openings and its arithmetic; True or :class:`IntegrityError`.

    ``manifest`` (a :class:`Manifest`, or a folder holding ``fingerprint/manifest.json`` and ``manifest.sig``, whose
    signature is then checked) lets the openings be checked against the published commitments.
    """
    parsed = _as_report(report)
    signer = _as_public_keys(public_key)
    if parsed.signature is None or parsed.signer is None:
        raise IntegrityError("The ownership report is unsigned.")
    try:
        claimed_signer = PublicKeys.from_dict(parsed.signer)
        signature = base64.b64decode(parsed.signature, validate=True)
    except (KeyFileError, binascii.Error, TypeError, ValueError) as e:
        raise IntegrityError(f"The ownership report's signer or signature is malformed ({e}).") from None
    if claimed_signer != signer:
        raise IntegrityError(f"The report was signed by key {claimed_signer.key_id}, not by {signer.key_id}.")
    signer.verify(signature, _REPORT_SIG_CONTEXT + canonical_json(parsed._body()), what="ownership report")

    _check_arithmetic(parsed)
    committed = {int(k): v for k, v in ((parsed.owner or {}).get("commitments") or {}).items()}
    for opening in parsed.openings:
        if committed.get(opening.index) != opening.commitment():
            raise IntegrityError(f"Opening of pair {opening.index} does not match the commitment in the report.")
    if manifest is not None:
        published = _as_manifest(manifest)
        if parsed.owner is None or parsed.owner.get("manifest_sha256") != published.sha256:
            raise IntegrityError(
                f"The report refers to manifest {(parsed.owner or {}).get('manifest_sha256')!r}, not to the given "
                f"manifest {published.sha256}."
            )
        if parsed.owner.get("key_id") != published.owner.key_id:
            raise IntegrityError(f"The report names owner key {parsed.owner.get('key_id')!r}, but the manifest is "
                                 f"signed by {published.owner.key_id}.")
        for opening in parsed.openings:
            index = opening.index
            if index >= published.num_fingerprints or published.commitments[index] != opening.commitment():
                raise IntegrityError(f"Opening of pair {opening.index} does not match the published manifest.")
    return True


def _check_arithmetic(report: OwnershipReport) -> None:
    hits = sorted(o["index"] for o in report.outcomes if o.get("matched"))
    if len(report.outcomes) != report.total or hits != sorted(report.matched_indices) or len(hits) != report.matched:
        raise IntegrityError("The report's counts do not match its per-pair outcomes.")
    if report.total and not math.isclose(report.fsr, report.matched / report.total):
        raise IntegrityError("The report's FSR does not match its counts.")
    if report.claimed != (report.p_value < report.alpha):
        raise IntegrityError("The report's verdict does not match its p-value and alpha.")
    if report.openings:
        targets = {o["index"]: o["target"] for o in report.outcomes}
        if {o.index for o in report.openings} != set(targets):
            raise IntegrityError("The report's openings are not exactly the pairs it used.")
        for opening in report.openings:
            if targets[opening.index] != opening.target:
                raise IntegrityError(f"Pair {opening.index}'s target differs between outcome and opening.")


def _as_report(report: Any) -> OwnershipReport:
    if isinstance(report, OwnershipReport):
        return report
    if isinstance(report, dict):
        return OwnershipReport.from_dict(report)
    if isinstance(report, os.PathLike) or (isinstance(report, str) and not report.lstrip().startswith("{")):
        path = Path(report)
        if not path.is_file():
            raise IntegrityError(f"No ownership report at {path}.")
        return OwnershipReport.from_json(path.read_bytes())
    return OwnershipReport.from_json(report)


def _as_public_keys(key: Any) -> PublicKeys:
    if isinstance(key, PublicKeys):
        return key
    if isinstance(key, OwnerKeys):
        return key.public()
    if isinstance(key, str) and key.lstrip().startswith("{"):
        return PublicKeys.from_json(key)
    return PublicKeys.load(key)


def _as_manifest(manifest: Any) -> Manifest:
    if isinstance(manifest, Manifest):
        return manifest
    folder = Path(manifest)
    if folder.is_file():
        folder = folder.parent.parent  # .../fingerprint/manifest.json -> repo folder
    manifest_file, signature_file = folder / MANIFEST_PATH, folder / SIGNATURE_PATH
    if not manifest_file.is_file() or not signature_file.is_file():
        raise IntegrityError(f"No {MANIFEST_PATH} with {SIGNATURE_PATH} under {folder}.")
    return verify_manifest_signature(manifest_file.read_bytes(), signature_file.read_bytes())
