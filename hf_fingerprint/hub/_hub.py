"""Talking to a Hub: errors turned into one clear :class:`HubError` line, and downloads pinned to a commit."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import HubError

__all__ = ["hub_errors", "pull_suspect"]


@contextmanager
def hub_errors(action: str) -> Iterator[None]:
    """Re-raise Hub client errors from the block as :class:`HubError` ("<action> failed: <reason>")."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except RepositoryNotFoundError:
        reason = "repository not found (check the name, or the token if it is private)"
        raise HubError(f"{action} failed: {reason}.") from None
    except RevisionNotFoundError:
        raise HubError(f"{action} failed: revision not found.") from None
    except RemoteEntryNotFoundError as e:
        raise HubError(f"{action} failed: file not found ({_short(e)}).") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 412:
            raise HubError(f"{action} failed: the repo changed during the push; push again.") from None
        if status in (401, 403):
            raise HubError(f"{action} failed: not allowed ({_short(e)}); check the token.") from None
        raise HubError(f"{action} failed: {_short(e)}") from None
    except (*_transport_errors(), LocalEntryNotFoundError) as e:
        raise HubError(f"{action} failed: cannot reach the Hub ({_short(e)}).") from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of the HTTP client huggingface_hub uses (httpx2 from 2.x, httpx before)."""
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _short(error: BaseException) -> str:
    message = getattr(error, "server_message", None) or str(error)
    return message.strip().splitlines()[0][:300] if message.strip() else type(error).__name__


def pull_suspect(
    repo_id: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> tuple[Path, str]:
    """Download ``repo_id`` (resolved to one commit first) and return ``(local folder, commit sha)``.

    Files already in the cache are not downloaded again, and an interrupted file download resumes where it
    stopped, so calling this again after a failure finishes the pull.
    """
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(endpoint=endpoint, token=token)
    where = f"{repo_id}" + (f"@{revision}" if revision else "") + f" from {api.endpoint}"
    with hub_errors(f"Pulling {where}"):
        sha = api.model_info(repo_id, revision=revision).sha
        if sha is None:
            raise HubError(f"Pulling {where} failed: the Hub did not say which commit it is.")
        folder = snapshot_download(
            repo_id, revision=sha, endpoint=endpoint, token=token, cache_dir=cache_dir,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
        )
    return Path(folder), sha
