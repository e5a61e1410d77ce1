"""Exceptions of analytics.store."""

from analytics import AnalyticsError


class StoreError(AnalyticsError):
    """Root exception of analytics.store."""


class StoreClosed(StoreError):
    """The store was used after close()."""


class OffsetBackwards(StoreError, ValueError):
    """An offset older than the one already applied for its partition was offered."""


class StoreUnreachable(StoreError, ConnectionError):
    """The store's server cannot be reached (or refused the connection)."""
