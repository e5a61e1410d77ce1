"""Per-user experiment state behind one interface: SQLite (default, durable) or in-memory."""

from analytics.store.base import EventStore, ExposureRow, OutcomeRow, TopicPartition
from analytics.store.exceptions import StoreError
from analytics.store.memory import MemoryEventStore
from analytics.store.sqlite import SQLiteEventStore


def open_store(path: str | None, attribution_window_ms: int | None = None) -> EventStore:
    """SQLite store at ``path``; the in-memory store when path is None or ``":memory:"``."""
    if path is None or path == ":memory:":
        return MemoryEventStore(attribution_window_ms=attribution_window_ms)
    return SQLiteEventStore(path, attribution_window_ms=attribution_window_ms)


__all__ = [
    "EventStore",
    "ExposureRow",
    "MemoryEventStore",
    "OutcomeRow",
    "SQLiteEventStore",
    "StoreError",
    "TopicPartition",
    "open_store",
]
