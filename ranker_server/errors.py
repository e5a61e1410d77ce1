"""Errors of the ranker server; ``interceptors.ExceptionToStatusInterceptor`` maps them to gRPC codes."""

from __future__ import annotations


class RankerError(Exception):
    """Root of every error the ranker raises on purpose; carries a reason readable by the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidInput(RankerError, ValueError):
    """The request is malformed; ``field`` names the offending request field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class ModelNotFound(RankerError, LookupError):
    """A variant names a model version that the repository does not serve."""


class ModelNotReady(RankerError):
    """The model exists but is still loading, or the server is shutting down."""


class QueueFull(RankerError):
    """The batching queue of a model version is full; the client should back off and retry."""


class UpstreamError(RankerError):
    """The retrieval service failed or timed out."""


class PackageError(RankerError):
    """A model package is broken: bad checksum, golden outputs that do not match, unreadable files."""


class SettingsError(RankerError):
    """The server configuration is invalid (names the flag or key)."""


class DeadlineExceeded(RankerError):
    """The request's deadline passed before it could be scored."""
