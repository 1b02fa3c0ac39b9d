"""Test helpers: a local Hub-compatible server (:class:`LocalHub`) and its pytest fixture (``pytest_plugin``)."""

from .local_hub import LocalHub, RequestRecord

__all__ = ["LocalHub", "RequestRecord"]
