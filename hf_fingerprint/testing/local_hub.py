"""A local, Hub-compatible HTTP server for tests, notebooks and offline demos.

It speaks the subset of the Hugging Face Hub API that ``huggingface_hub`` 2.x uses to create repos, commit files
(regular, base64 NDJSON uploads), tag revisions, read repo info and trees, and download files (``/resolve`` with
``X-Repo-Commit``, ``ETag`` and byte ranges, so interrupted downloads resume). Only the endpoint differs from the
real Hub: point ``HfApi(endpoint=...)``, ``snapshot_download(endpoint=...)`` and ``hf_hub_download(endpoint=...)``
at :meth:`LocalHub.start`'s return value.

Storage on disk, under ``root``::

    blobs/<sha256>                                   file contents, content-addressed
    repos/<type>s/<namespace>/<name>/repo.json       visibility, creation time, branches and tags
    repos/<type>s/<namespace>/<name>/commits/<sha>.json  one snapshot per commit: parent, message, file list

Every commit is a full snapshot (path -> blob), so old revisions and tags resolve forever.

Access control: without ``tokens`` the server is open (anyone who can reach the port may read and write, and
private repos are not hidden). With ``tokens={token: user}``, writes need the namespace owner's token and
private repos are invisible (404) to everyone else, as on the real Hub. Only regular uploads are offered
(no LFS or Xet), so the whole commit travels in one request: fine for test and small demo models.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["LocalHub", "RequestRecord"]

REPO_TYPES = ("model", "dataset", "space")
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIXES = {"datasets": "dataset", "spaces": "space"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_HEX_RE = re.compile(r"^[0-9a-f]{7,40}$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_GITATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.gguf filter=lfs diff=lfs merge=lfs -text\n"
).encode()
_CHUNK = 1 << 20


class _HubHTTPError(Exception):
    """An error answer: HTTP status, optional ``X-Error-Code`` and a message for ``X-Error-Message``/body."""

    def __init__(self, status: int, message: str, *, code: str | None = None, commit: str | None = None,
                 extra: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.commit = commit
        self.extra = dict(extra or {})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _git_blob_oid(content: bytes) -> str:
    """The git object id of a blob, as the Hub reports for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _safe_repo_path(path: str) -> str:
    """Normalise a path in a repo; refuse absolute paths and ``..`` components."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or path.startswith("/"):
        raise _HubHTTPError(400, f"Invalid path in repo: {path!r}")
    return "/".join(parts)


@dataclass
class RequestRecord:
    """One request the server answered: for tests that check what the client did (e.g. a resumed download)."""

    method: str
    path: str
    status: int
    range: str | None = None
    user: str | None = None


@dataclass
class _FaultPlan:
    path: str
    after_bytes: int | None
    status: int | None
    times: int


class HubStorage:
    """Repos, commits, refs and blobs on disk. Thread-safe; the HTTP layer only translates requests to calls."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # ---- repos -------------------------------------------------------------------------------------------------
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        namespace, _, name = repo_id.partition("/")
        if not (_NAME_RE.match(namespace) and _NAME_RE.match(name)) or ".." in repo_id or repo_type not in REPO_TYPES:
            raise _HubHTTPError(404, "Repository not found", code="RepoNotFound")
        return self.root / "repos" / f"{repo_type}s" / namespace / name

    def repo(self, repo_type: str, repo_id: str) -> dict[str, Any] | None:
        """The repo record (``private``, ``created_at``, ``branches``, ``tags``), or None if it does not exist."""
        meta = self._repo_dir(repo_type, repo_id) / "repo.json"
        if not meta.is_file():
            return None
        return json.loads(meta.read_text(encoding="utf-8"))

    def _save_repo(self, repo_type: str, repo_id: str, record: dict[str, Any]) -> None:
        data = json.dumps(record, indent=1, sort_keys=True).encode()
        _atomic_write(self._repo_dir(repo_type, repo_id) / "repo.json", data)

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, owner: str | None) -> dict[str, Any]:
        """Create a repo with one initial commit holding ``.gitattributes``; 409 if it exists."""
        try:
            self._repo_dir(repo_type, repo_id)
        except _HubHTTPError:
            raise _HubHTTPError(400, f"Invalid repo id {repo_id!r}: expected 'namespace/name'.") from None
        with self._lock:
            if self.repo(repo_type, repo_id) is not None:
                raise _HubHTTPError(409, "You already created this repo")
            record = {"private": bool(private), "created_at": _now(), "owner": owner, "branches": {}, "tags": {}}
            self._save_repo(repo_type, repo_id, record)
            entry = self.put_blob(_GITATTRIBUTES)
            self.commit(repo_type, repo_id, "main", additions={".gitattributes": entry},
                        summary="initial commit", create_branch=True)
            return self.repo(repo_type, repo_id)  # type: ignore[return-value]

    # ---- blobs -------------------------------------------------------------------------------------------------
    def put_blob(self, content: bytes) -> dict[str, Any]:
        """Store content; return its file entry (``sha256``, git ``oid``, ``size``)."""
        digest = hashlib.sha256(content).hexdigest()
        path = self.blob_path(digest)
        if not path.is_file():
            _atomic_write(path, content)
        return {"sha256": digest, "oid": _git_blob_oid(content), "size": len(content)}

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    # ---- revisions ---------------------------------------------------------------------------------------------
    def read_commit(self, repo_type: str, repo_id: str, sha: str) -> dict[str, Any]:
        path = self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
        return json.loads(path.read_text(encoding="utf-8"))

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        """Branch, tag, full or short commit sha -> full commit sha; 404 RevisionNotFound otherwise."""
        record = self.repo(repo_type, repo_id)
        if record is None:
            raise _HubHTTPError(404, "Repository not found", code="RepoNotFound")
        if revision in record["branches"]:
            return record["branches"][revision]
        if revision in record["tags"]:
            return record["tags"][revision]["commit"]
        if _HEX_RE.match(revision):
            commits = self._repo_dir(repo_type, repo_id) / "commits"
            matches = [p.stem for p in commits.glob(f"{revision}*.json")]
            if len(matches) == 1:
                return matches[0]
        raise _HubHTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        *,
        additions: Mapping[str, dict[str, Any]],
        deleted_files: list[str] | None = None,
        deleted_folders: list[str] | None = None,
        summary: str,
        description: str = "",
        parent: str | None = None,
        author: str | None = None,
        create_branch: bool = False,
    ) -> str:
        """Make a new snapshot of ``branch``: previous files, minus deletions, plus additions. Returns its sha."""
        with self._lock:
            record = self.repo(repo_type, repo_id)
            if record is None:
                raise _HubHTTPError(404, "Repository not found", code="RepoNotFound")
            head = record["branches"].get(branch)
            if head is None and not create_branch:
                raise _HubHTTPError(404, f"Invalid rev id: {branch} is not a branch", code="RevisionNotFound")
            if parent is not None and (head is None or not head.startswith(parent.lower())):
                raise _HubHTTPError(412, f"A commit has happened since {parent}. Please refresh and try again.")
            files: dict[str, Any] = dict(self.read_commit(repo_type, repo_id, head)["files"]) if head else {}
            for path in deleted_files or []:
                if path not in files:
                    raise _HubHTTPError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                del files[path]
            for folder in deleted_folders or []:
                prefix = folder.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise _HubHTTPError(404, f"A folder with this name doesn't exist: {folder}", code="EntryNotFound")
                for path in doomed:
                    del files[path]
            files.update(additions)
            body = {
                "parent": head,
                "summary": summary,
                "description": description,
                "author": author,
                "date": _now(),
                "files": dict(sorted(files.items())),
            }
            sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
            commit_path = self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
            _atomic_write(commit_path, json.dumps(body, indent=1, sort_keys=True).encode())
            record["branches"][branch] = sha
            record["last_modified"] = body["date"]
            self._save_repo(repo_type, repo_id, record)
            return sha

    def create_ref(self, repo_type: str, repo_id: str, kind: str, name: str, sha: str, message: str | None) -> None:
        """Create a tag or branch pointing at ``sha``; 409 if it exists."""
        if not _REF_RE.match(name) or ".." in name:
            raise _HubHTTPError(400, f"Invalid {kind} name: {name!r}")
        with self._lock:
            record = self.repo(repo_type, repo_id)
            assert record is not None
            if name in record["tags"] or name in record["branches"]:
                raise _HubHTTPError(409, f"Reference {name} already exists")
            if kind == "tag":
                record["tags"][name] = {"commit": sha, "message": message, "date": _now()}
            else:
                record["branches"][name] = sha
            self._save_repo(repo_type, repo_id, record)


class _Handler(BaseHTTPRequestHandler):
    """Routes Hub API requests to :class:`HubStorage`."""

    protocol_version = "HTTP/1.1"
    server: _HubServer

    # ---- plumbing ----------------------------------------------------------------------------------------------
    def end_headers(self) -> None:
        # A response after which the server closes the socket must say so, or the client pools the connection
        # and its next request fails ("Server disconnected without sending a response").
        if self.close_connection and b"connection: close" not in b"".join(getattr(self, "_headers_buffer", [])).lower():
            self.send_header("Connection", "close")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        if self.server.hub.verbose:
            super().log_message(format, *args)

    def _endpoint(self) -> str:
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        return f"http://{host}"

    def _user(self) -> str | None:
        """The authenticated user, None if anonymous; 401 for a token the server does not know."""
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        tokens = self.server.hub.tokens
        if tokens is None:
            return "local-user" if token else None
        if token is None:
            return None
        if token not in tokens:
            raise _HubHTTPError(401, "Invalid credentials in Authorization header")
        return tokens[token]

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        try:
            return json.loads(self._read_body() or b"{}")
        except json.JSONDecodeError as e:
            raise _HubHTTPError(400, f"Body is not JSON: {e}") from e

    def _record(self, status: int) -> None:
        hub = self.server.hub
        with hub._log_lock:
            hub.requests.append(RequestRecord(self.command, self.path, status, self.headers.get("Range"),
                                              getattr(self, "_current_user", None)))

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._record(status)

    def _send_json(self, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _send_error(self, err: _HubHTTPError) -> None:
        safe_message = err.message.replace("\n", " ").encode("latin-1", "replace").decode("latin-1")
        headers = {"X-Error-Message": safe_message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.commit:
            headers["X-Repo-Commit"] = err.commit
        self._send_json({"error": err.message, **err.extra}, err.status, headers)

    def _dispatch(self) -> None:
        try:
            self._current_user = self._user()
            url = urlsplit(self.path)
            segments = [unquote(s) for s in url.path.split("/")[1:]]
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self._route(segments, query, url.path)
        except _HubHTTPError as err:
            if self.command == "POST":
                self.close_connection = True  # the body may be unread
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug here must still answer, not hang the client
            self.close_connection = True
            self._send_error(_HubHTTPError(500, f"Internal error in the local Hub: {type(exc).__name__}: {exc}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # ---- routing -----------------------------------------------------------------------------------------------
    def _route(self, seg: list[str], query: dict[str, str], raw_path: str) -> None:
        method = self.command
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo()
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml()
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if len(rest) >= 3 and rest[0] in _API_TYPES:
                repo_type, repo_id = _API_TYPES[rest[0]], f"{rest[1]}/{rest[2]}"
                action, args = (rest[3] if len(rest) > 3 else None), rest[4:]
                if action is None and method == "GET":
                    return self._repo_info(repo_type, repo_id, "main", query)
                if action == "revision" and len(args) == 1 and method == "GET":
                    return self._repo_info(repo_type, repo_id, args[0], query)
                if action == "tree" and args and method == "GET":
                    return self._tree(repo_type, repo_id, args[0], "/".join(args[1:]), query)
                if action == "refs" and not args and method == "GET":
                    return self._refs(repo_type, repo_id)
                if action == "preupload" and len(args) == 1 and method == "POST":
                    return self._preupload(repo_type, repo_id, args[0], query)
                if action == "commit" and len(args) == 1 and method == "POST":
                    return self._commit(repo_type, repo_id, args[0], query)
                if action in ("tag", "branch") and len(args) == 1 and method == "POST":
                    return self._create_ref(repo_type, repo_id, action, args[0])
            raise _HubHTTPError(404, f"No such API route: {method} {raw_path}")
        repo_type = "model"
        if seg and seg[0] in _URL_PREFIXES:
            repo_type, seg = _URL_PREFIXES[seg[0]], seg[1:]
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            # The revision is one quoted segment; the filename keeps its slashes.
            return self._resolve(repo_type, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        raise _HubHTTPError(404, f"Not found: {method} {raw_path}")

    # ---- access ------------------------------------------------------------------------------------------------
    def _readable(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        record = self.server.hub.storage.repo(repo_type, repo_id)
        if record is None or (record["private"] and not self._may_write(repo_id)):
            raise _HubHTTPError(404, "Repository not found", code="RepoNotFound")
        return record

    def _may_write(self, repo_id: str) -> bool:
        if self.server.hub.tokens is None:
            return True
        return self._current_user is not None and repo_id.split("/")[0] == self._current_user

    def _writable(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        record = self._readable(repo_type, repo_id)
        if not self._may_write(repo_id):
            if self._current_user is None:
                raise _HubHTTPError(401, "Authentication required to write to this repo")
            raise _HubHTTPError(403, f"You don't have the rights to write to {repo_id}")
        return record

    # ---- handlers ----------------------------------------------------------------------------------------------
    def _create_repo(self) -> None:
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise _HubHTTPError(400, f"Invalid repo type {repo_type!r}")
        namespace = payload.get("organization") or (self._current_user if self.server.hub.tokens else None)
        if not namespace:
            raise _HubHTTPError(400, "Repo id must be 'namespace/name' on this server")
        repo_id = f"{namespace}/{payload.get('name', '')}"
        if not self._may_write(repo_id):
            raise _HubHTTPError(403 if self._current_user else 401, f"You cannot create repos in {namespace}")
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self._endpoint()}/{prefix}{repo_id}"
        try:
            self.server.hub.storage.create_repo(repo_type, repo_id, private=private, owner=self._current_user)
        except _HubHTTPError as err:
            err.extra["url"] = url  # the client reads it on 409 with exist_ok=True
            raise
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        content = self._json_body().get("content", "")
        if content.startswith("---") and "\n---" not in content[3:]:
            raise _HubHTTPError(400, "README.md metadata block is not closed by a '---' line")
        self._send_json({"errors": [], "warnings": []})

    def _whoami(self) -> None:
        if self._current_user is None:
            raise _HubHTTPError(401, "Invalid credentials in Authorization header")
        self._send_json({"type": "user", "name": self._current_user, "fullname": self._current_user,
                         "orgs": [], "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str, query: dict[str, str]) -> None:
        storage = self.server.hub.storage
        record = self._readable(repo_type, repo_id)
        sha = storage.resolve(repo_type, repo_id, revision)
        commit = storage.read_commit(repo_type, repo_id, sha)
        blobs = query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, entry in commit["files"].items():
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
            siblings.append(sibling)
        info = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": sha,
            "private": record["private"],
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": record["created_at"],
            "lastModified": commit["date"],
            "siblings": siblings,
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        self._send_json(info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, folder: str, query: dict[str, str]) -> None:
        storage = self.server.hub.storage
        self._readable(repo_type, repo_id)
        sha = storage.resolve(repo_type, repo_id, revision)
        files = storage.read_commit(repo_type, repo_id, sha)["files"]
        recursive = query.get("recursive", "").lower() in ("1", "true")
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, entry in files.items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):
                sub = prefix + "/".join(parts[:i])
                entries.setdefault(sub, {"type": "directory", "path": sub, "size": 0,
                                         "oid": hashlib.sha1(f"tree {sha} {sub}".encode()).hexdigest()})
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
        if prefix and not entries:
            raise _HubHTTPError(404, f"{folder} does not exist on {revision}", code="EntryNotFound", commit=sha)
        self._send_json(sorted(entries.values(), key=lambda e: e["path"]))

    def _refs(self, repo_type: str, repo_id: str) -> None:
        record = self._readable(repo_type, repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in record["branches"].items()]
        tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": t["commit"]} for n, t in record["tags"].items()]
        self._send_json({"branches": branches, "tags": tags, "converts": []})

    def _preupload(self, repo_type: str, repo_id: str, revision: str, query: dict[str, str]) -> None:
        storage = self.server.hub.storage
        payload = self._json_body()
        self._writable(repo_type, repo_id)
        if query.get("create_pr"):
            raise _HubHTTPError(400, "Pull requests are not supported by this local Hub")
        try:
            files = storage.read_commit(repo_type, repo_id, storage.resolve(repo_type, repo_id, revision))["files"]
        except _HubHTTPError:
            files = {}
        answer = []
        for item in payload.get("files", []):
            path = item.get("path", "")
            existing = files.get(path)
            answer.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                           "oid": existing["oid"] if existing else None})
        self._send_json({"files": answer, "commitOid": None})

    def _iter_ndjson(self) -> Iterator[dict[str, Any]]:
        remaining = int(self.headers.get("Content-Length") or 0)
        if not remaining and self.headers.get("Transfer-Encoding"):
            raise _HubHTTPError(411, "Send the commit with a Content-Length")
        while remaining > 0:
            line = self.rfile.readline(remaining)
            if not line:
                raise _HubHTTPError(400, "Commit body ended early")
            remaining -= len(line)
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise _HubHTTPError(400, f"Commit body line is not JSON: {e}") from e

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: dict[str, str]) -> None:
        storage = self.server.hub.storage
        self._writable(repo_type, repo_id)
        if query.get("create_pr"):
            raise _HubHTTPError(400, "Pull requests are not supported by this local Hub")
        header: dict[str, Any] | None = None
        additions: dict[str, dict[str, Any]] = {}
        deleted_files: list[str] = []
        deleted_folders: list[str] = []
        for item in self._iter_ndjson():
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HubHTTPError(400, f"Unsupported encoding {value.get('encoding')!r}")
                try:
                    content = base64.b64decode(value["content"], validate=True)
                except (ValueError, KeyError) as e:
                    raise _HubHTTPError(400, f"Bad base64 content for {value.get('path')!r}") from e
                additions[_safe_repo_path(value["path"])] = storage.put_blob(content)
            elif key == "deletedFile":
                deleted_files.append(_safe_repo_path(value["path"]))
            elif key == "deletedFolder":
                deleted_folders.append(_safe_repo_path(value["path"]))
            elif key == "lfsFile":
                raise _HubHTTPError(400, "LFS uploads are not supported: this local Hub offers regular uploads only")
            else:
                raise _HubHTTPError(400, f"Unknown commit operation {key!r}")
        if header is None or not header.get("summary"):
            raise _HubHTTPError(400, "Commit header with a summary is required")
        sha = storage.commit(
            repo_type, repo_id, revision,
            additions=additions, deleted_files=deleted_files, deleted_folders=deleted_folders,
            summary=header["summary"], description=header.get("description", ""),
            parent=header.get("parentCommit"), author=self._current_user,
        )
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._send_json({"success": True, "commitOid": sha, "pullRequestUrl": None,
                         "commitUrl": f"{self._endpoint()}/{prefix}{repo_id}/commit/{sha}"})

    def _create_ref(self, repo_type: str, repo_id: str, kind: str, name_or_rev: str) -> None:
        storage = self.server.hub.storage
        payload = self._json_body()
        self._writable(repo_type, repo_id)
        if kind == "tag":  # POST .../tag/{revision} {"tag": name, "message": ...}
            sha = storage.resolve(repo_type, repo_id, name_or_rev)
            storage.create_ref(repo_type, repo_id, "tag", payload.get("tag", ""), sha, payload.get("message"))
        else:  # POST .../branch/{name} {"startingPoint": revision}
            sha = storage.resolve(repo_type, repo_id, payload.get("startingPoint") or "main")
            storage.create_ref(repo_type, repo_id, "branch", name_or_rev, sha, None)
        self._send_json({})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        storage = self.server.hub.storage
        self._readable(repo_type, repo_id)
        sha = storage.resolve(repo_type, repo_id, revision)
        entry = storage.read_commit(repo_type, repo_id, sha)["files"].get(path)
        if entry is None:
            raise _HubHTTPError(404, f"Entry not found: {path}", code="EntryNotFound", commit=sha)
        size = entry["size"]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
        start, end, status = 0, size - 1, 200
        wanted = self.headers.get("Range")
        if wanted and self.command == "GET":
            match = _RANGE_RE.match(wanted.strip())
            if match is None or (not match.group(1) and not match.group(2)):
                raise _HubHTTPError(416, f"Unsupported range {wanted!r}")
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start, end = max(size - int(match.group(2)), 0), size - 1
            if start >= size or start > end:
                self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        fault = self.server.hub._take_fault(path) if self.command == "GET" else None
        if fault is not None and fault.status is not None:
            raise _HubHTTPError(fault.status, "Simulated failure (LocalHub.fail_next_download)")
        cut = fault.after_bytes if fault is not None else None
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self._record(status)
        if self.command == "HEAD" or not length:
            return
        with open(storage.blob_path(entry["sha256"]), "rb") as f:
            f.seek(start)
            sent = 0
            while sent < length:
                n = min(_CHUNK, length - sent)
                if cut is not None:
                    n = min(n, cut - sent)
                    if n <= 0:  # planned interruption: drop the connection mid-body
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                self.wfile.write(f.read(n))
                sent += n


class _HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: LocalHub):
        self.hub = hub
        super().__init__(address, _Handler)


@dataclass
class LocalHub:
    """A Hub-compatible server over ``root``; ``start()`` returns its endpoint URL.

    Use as a context manager (``with LocalHub(tmp) as endpoint: ...``) or call ``start()``/``stop()``.
    ``tokens`` maps access tokens to user names and turns access control on.
    """

    root: str | os.PathLike[str]
    host: str = "127.0.0.1"
    port: int = 0
    tokens: Mapping[str, str] | None = None
    verbose: bool = False
    requests: list[RequestRecord] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.storage = HubStorage(self.root)
        self._server: _HubServer | None = None
        self._thread: threading.Thread | None = None
        self._log_lock = threading.Lock()
        self._faults: list[_FaultPlan] = []

    @property
    def endpoint(self) -> str:
        """``http://host:port`` of the running server."""
        if self._server is None:
            raise RuntimeError("LocalHub is not running: call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _bind(self) -> _HubServer:
        if self._server is not None:
            raise RuntimeError(f"LocalHub already running at {self.endpoint}")
        self._server = _HubServer((self.host, self.port), self)
        return self._server

    def start(self) -> str:
        """Serve in a background thread; return the endpoint URL."""
        server = self._bind()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"LocalHub:{server.server_address[1]}", daemon=True)
        self._thread.start()
        return self.endpoint

    def serve_forever(self, *, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in the calling thread until interrupted (``hf-fingerprint hub serve``); ``on_ready(endpoint)``."""
        server = self._bind()
        try:
            if on_ready is not None:
                on_ready(self.endpoint)
            server.serve_forever(poll_interval=0.5)
        finally:
            server.server_close()
            self._server = None

    def stop(self) -> None:
        """Stop serving and free the port. Repos stay on disk under ``root``."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next_download(
        self, path: str, *, after_bytes: int | None = None, status: int | None = None, times: int = 1
    ) -> None:
        """Make the next ``times`` GETs of ``path`` (in any repo) fail, to test how clients recover.

        With ``after_bytes`` the connection drops after that many bytes of the body (a network failure
        mid-download); with ``status`` the server answers that HTTP error status instead of the file.
        """
        if (after_bytes is None) == (status is None):
            raise ValueError("give exactly one of after_bytes or status")
        with self._log_lock:
            self._faults.append(_FaultPlan(path, after_bytes, status, times))

    def _take_fault(self, path: str) -> _FaultPlan | None:
        with self._log_lock:
            for plan in self._faults:
                if plan.path == path and plan.times > 0:
                    plan.times -= 1
                    return plan
        return None
