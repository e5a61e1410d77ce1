"""Errors of the retrieval server; the interceptor maps each kind to one gRPC status code."""

from __future__ import annotations


class RetrievalError(Exception):
    """Root of every error the retrieval server raises on purpose."""


class InvalidInput(RetrievalError, ValueError):
    """A request field is wrong (-> INVALID_ARGUMENT); the message starts with the field name."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class ModelNotFound(RetrievalError, LookupError):
    """The request names a model version the server does not hold (-> NOT_FOUND)."""


class ModelNotReady(RetrievalError):
    """The server is starting or draining (-> UNAVAILABLE)."""


class PackageError(RetrievalError):
    """A model package is incomplete, fails its sha256 or is not a retrieval package (startup / load error)."""
