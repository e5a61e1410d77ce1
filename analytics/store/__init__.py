"""Event stores behind one interface: DuckDB over Parquet parts (default, embedded), ClickHouse, in-memory.

``open_store`` takes what ``--store`` flags take:

- a folder path, or ``duckdb:///abs/path`` / ``duckdb://rel/path``: the embedded DuckDB store;
- ``clickhouse://[user[:password]@]host[:port]/database``: a ClickHouse server (clickhouse-connect);
- ``chdb:///path`` (or ``chdb://`` for a temporary one): ClickHouse's engine in-process (chDB);
- ``:memory:`` or None: the in-memory reference store.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from analytics.store.base import (
    EventStore,
    ExposureColumns,
    ExposureRow,
    OutcomeColumns,
    OutcomeRow,
    TopicPartition,
)
from analytics.store.duckdb_store import DuckDBEventStore
from analytics.store.exceptions import StoreError, StoreUnreachable
from analytics.store.memory import MemoryEventStore

STORE_URL_HELP = (
    "a folder (the embedded DuckDB store), duckdb:///path, clickhouse://[user[:password]@]host[:port]/database, "
    "chdb:///path or :memory:"
)


def open_store(spec: str | Path | None, attribution_window_ms: int | None = None) -> EventStore:
    """The store ``spec`` names (see the module docstring).

    Raises:
        StoreError: an unknown URL scheme, a path that is not a store (e.g. an old SQLite file), or a
            server that cannot be reached (``StoreUnreachable``); the message is one line.
    """
    if spec is None or str(spec) == ":memory:":
        return MemoryEventStore(attribution_window_ms=attribution_window_ms)
    text = str(spec)
    scheme = urlsplit(text).scheme if "://" in text else ""
    if scheme in ("", "file", "duckdb"):
        path = text.split("://", 1)[1] if scheme else text
        if not path:
            raise StoreError(f"store URL {text!r} names no folder; use {STORE_URL_HELP}")
        return DuckDBEventStore(path, attribution_window_ms=attribution_window_ms)
    if scheme in ("clickhouse", "chdb"):
        from analytics.store.clickhouse_store import ClickHouseEventStore

        return ClickHouseEventStore.from_url(text, attribution_window_ms=attribution_window_ms)
    raise StoreError(f"unsupported store URL {text!r}: use {STORE_URL_HELP}")


def is_local_store(spec: str | Path) -> bool:
    """True when ``spec`` names a folder on this machine (the DuckDB store), not a server."""
    text = str(spec)
    return "://" not in text or urlsplit(text).scheme in ("file", "duckdb")


__all__ = [
    "DuckDBEventStore",
    "EventStore",
    "ExposureColumns",
    "ExposureRow",
    "MemoryEventStore",
    "OutcomeColumns",
    "OutcomeRow",
    "StoreError",
    "StoreUnreachable",
    "TopicPartition",
    "is_local_store",
    "open_store",
]
