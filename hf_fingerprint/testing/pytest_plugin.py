"""pytest fixtures for a local Hub: add ``pytest_plugins = ["hf_fingerprint.testing.pytest_plugin"]`` to a test module
or ``conftest.py``.

- ``local_hub``: the endpoint URL of a fresh :class:`~hf_fingerprint.testing.LocalHub` (one per test).
- ``local_hub_server``: the running :class:`~hf_fingerprint.testing.LocalHub` itself (request log, fault injection).
- ``hf_cache``: a temporary Hugging Face download cache, also made the process default for the test. Both Hub
  fixtures use it, since the download cache is keyed by repo id, not by endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .local_hub import LocalHub


@pytest.fixture
def hf_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty Hugging Face hub cache directory, set as the default for this test."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path_factory.mktemp("hf_cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def local_hub_server(tmp_path_factory: pytest.TempPathFactory, hf_cache: Path) -> Iterator[LocalHub]:
    """A running LocalHub over a temporary root, stopped after the test."""
    hub = LocalHub(tmp_path_factory.mktemp("local_hub"))
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def local_hub(local_hub_server: LocalHub) -> str:
    """The endpoint URL (``http://127.0.0.1:PORT``) of a fresh LocalHub."""
    return local_hub_server.endpoint
