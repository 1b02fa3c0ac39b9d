"""``hf-fingerprint`` commands of the Hub workflow: keygen, push, pull, check, verify-repo, verify-report, hub serve.

Passphrases come from ``$HF_FINGERPRINT_PASSPHRASE`` or a prompt, never from the command line; Hub tokens from
``$HF_TOKEN`` (or ``hf auth login``), the endpoint from ``--endpoint`` or ``$HF_ENDPOINT``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from ..errors import HubError, KeyFileError
from .keys import OwnerKeys

__all__ = ["add_hub_commands", "PASSPHRASE_ENV", "HUB_TOKENS_ENV"]

PASSPHRASE_ENV = "HF_FINGERPRINT_PASSPHRASE"
HUB_TOKENS_ENV = "HF_FINGERPRINT_HUB_TOKENS"


def _passphrase(*, confirm: bool = False) -> str:
    """The key-file passphrase from the environment, else typed at a prompt (twice when ``confirm``)."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if not sys.stdin.isatty():
        raise KeyFileError(f"No passphrase: set {PASSPHRASE_ENV} or run in a terminal to be prompted.")
    value = getpass.getpass("Key file passphrase: ")
    if confirm and getpass.getpass("Repeat the passphrase: ") != value:
        raise KeyFileError("The two passphrases differ.")
    if not value:
        raise KeyFileError("The passphrase must not be empty.")
    return value


def _load_keys(path: str) -> OwnerKeys:

    return OwnerKeys.load(path, _passphrase())


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.output)
    if path.exists() and not args.force:
        raise KeyFileError(f"{path} already exists; refusing to replace an owner key (use --force to do so).")
    keys = OwnerKeys.generate()
    keys.save(path, _passphrase(confirm=True), overwrite=args.force)
    public = keys.public().save(args.public or f"{path}.pub.json")
    print(f"Wrote owner keys {keys.key_id} to {path} (secret, passphrase-protected) and the public keys to {public}.")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .push import AUTO_TAG, push_fingerprinted

    keys = _load_keys(args.keys)
    sha = push_fingerprinted(
        args.model, None, args.repo_id, args.fingerprints, keys,
        endpoint=args.endpoint, private=not args.public, adapter_only=args.adapter_only, arbiter=args.arbiter,
        revision_tag=None if args.no_tag else (args.tag or AUTO_TAG),
    )
    print(f"Pushed {args.repo_id} at commit {sha}.")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from ._hub import pull_suspect

    folder, sha = pull_suspect(args.repo_id, revision=args.revision, endpoint=args.endpoint, cache_dir=args.cache_dir)
    print(f"{folder}\n{sha}")
    return 0


def _pairs(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise HubError(f"--pairs must be comma-separated integers, got {text!r}.") from None


def cmd_check(args: argparse.Namespace) -> int:
    from .check import check_suspect
    from .keys import PublicKeys

    if args.owner_repo is None and args.fingerprints is None:
        raise HubError("Give --owner-repo (with --keys) or --fingerprints.")
    keys = _load_keys(args.keys) if args.keys else None
    report = check_suspect(
        args.suspect, keys=keys, fingerprints=args.fingerprints, owner_repo=args.owner_repo,
        owner_key=PublicKeys.load(args.owner_key) if args.owner_key else None,
        endpoint=args.endpoint, revision=args.revision, owner_revision=args.owner_revision,
        cache_dir=args.cache_dir, pairs=_pairs(args.pairs), base_model=args.base_model, alpha=args.alpha,
        device=args.device,
    )
    print(report.to_markdown())
    if args.json_out:
        print(f"Report written to {report.save(args.json_out)} (it opens the triggers of the pairs used).")
    return 0 if report.claimed else 1


def cmd_verify_repo(args: argparse.Namespace) -> int:
    from .check import verify_repo
    from .keys import PublicKeys

    manifest = verify_repo(
        args.repo, owner_key=PublicKeys.load(args.owner_key) if args.owner_key else None, key_id=args.key_id,
        revision=args.revision, endpoint=args.endpoint, cache_dir=args.cache_dir,
    )
    print(f"OK: {len(manifest.files)} files match manifest {manifest.sha256} signed by key {manifest.owner.key_id}.")
    return 0


def cmd_verify_report(args: argparse.Namespace) -> int:
    from .report import verify_report

    verify_report(args.report, args.public_key, manifest=args.manifest)
    print(f"OK: {args.report} is signed by {args.public_key} and its openings match"
          + (" the published manifest." if args.manifest else " its commitments."))
    return 0


def _hub_tokens() -> dict[str, str] | None:
    spec = os.environ.get(HUB_TOKENS_ENV, "").strip()
    if not spec:
        return None
    tokens = {}
    for item in spec.split(","):
        user, sep, token = item.strip().partition(":")
        if not sep or not user or not token:
            raise HubError(f"{HUB_TOKENS_ENV} must look like 'user:token,other:token2'.")
        tokens[token] = user
    return tokens


def cmd_hub_serve(args: argparse.Namespace) -> int:
    from ..testing.local_hub import LocalHub

    hub = LocalHub(args.root, host=args.host, port=args.port, tokens=_hub_tokens(), verbose=args.verbose)
    try:
        hub.serve_forever(on_ready=lambda endpoint: print(
            f"Local Hub serving {Path(args.root).resolve()} at {endpoint} (Ctrl+C to stop)", flush=True))
    except OSError as e:
        raise HubError(f"Cannot serve on {args.host}:{args.port}: {e.strerror or e}.") from None
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def add_hub_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register keygen, push, pull, check, verify-repo, verify-report and ``hub serve`` on ``subparsers``."""
    keygen = subparsers.add_parser("keygen", help="make owner keys (Ed25519 + X25519) in a passphrase-protected file",
                                   description=f"Make owner keys. The passphrase is read from ${PASSPHRASE_ENV} or "
                                               "prompted for.")
    keygen.add_argument("-o", "--output", required=True, help="key file to write (secret; mode 0600)")
    keygen.add_argument("--public", default=None, help="where to write the public keys (default OUTPUT.pub.json)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file (its keys are lost)")
    keygen.set_defaults(func=cmd_keygen)

    push = subparsers.add_parser("push", help="push a fingerprinted model with its signed manifest and sealed set",
                                 description="Push a saved model folder to a Hub repo in one commit, with "
                                             "fingerprint/manifest.json, manifest.sig and sealed, then tag it.")
    push.add_argument("model", help="saved model folder (or adapter folder with --adapter-only)")
    push.add_argument("repo_id", help="namespace/name")
    push.add_argument("--fingerprints", required=True, help="fingerprint set JSON written by 'generate'")
    push.add_argument("--keys", required=True, help="owner key file written by 'keygen'")
    push.add_argument("--arbiter", default=None, help="seal the set to this public key file instead of the owner's")
    push.add_argument("--adapter-only", action="store_true", help="push an adapter folder instead of a model")
    push.add_argument("--public", action="store_true", help="make a new repo public (default private)")
    push.add_argument("--tag", default=None, help="tag for the pushed revision (default fingerprint-<manifest hash>)")
    push.add_argument("--no-tag", action="store_true", help="do not tag the pushed revision")
    push.add_argument("--endpoint", default=None, help="Hub endpoint (default $HF_ENDPOINT or huggingface.co)")
    push.set_defaults(func=cmd_push)

    pull = subparsers.add_parser("pull", help="download a suspect repo at one commit",
                                 description="Download a repo; prints the local folder and the commit sha.")
    pull.add_argument("repo_id", help="namespace/name")
    pull.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    pull.add_argument("--endpoint", default=None, help="Hub endpoint (default $HF_ENDPOINT or huggingface.co)")
    pull.add_argument("--cache-dir", default=None, help="download cache (default the Hugging Face cache)")
    pull.set_defaults(func=cmd_pull)

    check = subparsers.add_parser("check", help="check a suspect model for your fingerprints; signed report",
                                  description="Query a suspect model (Hub id or folder) with the fingerprints "
                                              "sealed in --owner-repo (opened with --keys) or given with "
                                              "--fingerprints. Exit status 0 when ownership is claimed, 1 when not.")
    check.add_argument("suspect", help="Hub repo id or local model folder")
    check.add_argument("--owner-repo", default=None, help="your fingerprinted repo (id or folder) holding the proof")
    check.add_argument("--fingerprints", default=None, help="fingerprint set JSON (instead of --owner-repo)")
    check.add_argument("--keys", default=None, help="key file that opens the sealed set and signs the report")
    check.add_argument("--owner-key", default=None, help="pin the owner's public key file (default: the manifest's)")
    check.add_argument("--pairs", default=None, help="only use these pair indices, e.g. 0,3,5 (others stay secret)")
    check.add_argument("--base-model", default=None, help="base model when the suspect is an adapter")
    check.add_argument("--alpha", type=float, default=1e-6, help="claim when the p-value is below this (1e-6)")
    check.add_argument("--revision", default=None, help="suspect revision (default main)")
    check.add_argument("--owner-revision", default=None, help="owner repo revision (default main)")
    check.add_argument("--endpoint", default=None, help="Hub endpoint (default $HF_ENDPOINT or huggingface.co)")
    check.add_argument("--cache-dir", default=None, help="download cache (default the Hugging Face cache)")
    check.add_argument("--device", default=None, help="torch device (default cpu)")
    check.add_argument("--json", dest="json_out", default=None, metavar="PATH", help="write the signed report here")
    check.set_defaults(func=cmd_check)

    verify_repo = subparsers.add_parser("verify-repo", help="check a fingerprinted repo's signature and file hashes",
                                        description="Check the manifest signature and the SHA-256 of every file "
                                                    "it lists. Anyone can run it; no secret is needed.")
    verify_repo.add_argument("repo", help="Hub repo id or local folder")
    verify_repo.add_argument("--key-id", default=None, help="the owner key id the model card shows")
    verify_repo.add_argument("--owner-key", default=None, help="the owner's public key file")
    verify_repo.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    verify_repo.add_argument("--endpoint", default=None, help="Hub endpoint (default $HF_ENDPOINT or huggingface.co)")
    verify_repo.add_argument("--cache-dir", default=None, help="download cache (default the Hugging Face cache)")
    verify_repo.set_defaults(func=cmd_verify_repo)

    verify_report = subparsers.add_parser("verify-report", help="check a signed ownership report",
                                          description="Check a report's signature, arithmetic and commitment "
                                                      "openings (against a pulled owner repo with --manifest).")
    verify_report.add_argument("report", help="report JSON written by 'check --json'")
    verify_report.add_argument("--public-key", required=True, help="public key file of who signed the report")
    verify_report.add_argument("--manifest", default=None, help="folder of the pulled owner repo")
    verify_report.set_defaults(func=cmd_verify_report)

    hub = subparsers.add_parser("hub", help="a local Hub-compatible server", description="Local Hub tools.")
    hub_sub = hub.add_subparsers(dest="hub_command", metavar="COMMAND")
    hub_sub.required = True
    serve = hub_sub.add_parser("serve", help="serve repos stored under --root over HTTP",
                               description="Serve a Hub-compatible API on 127.0.0.1 (repos kept under --root). "
                                           f"Access control is off unless ${HUB_TOKENS_ENV}='user:token,...' is set.")
    serve.add_argument("--root", required=True, help="folder holding the repos (created if missing)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    serve.set_defaults(func=cmd_hub_serve)
