"""Migration of a SQLite event store (the format before the DuckDB store) into any ``EventStore``.

The SQLite store kept, per (experiment, user), the first exposure (event id, variant, time) and the latest
exposure time, and every outcome once. Each first exposure becomes one exposure event; where the latest
exposure time differs, a second exposure at that time keeps ``time_range`` unchanged (it never changes the
first exposure, so no user changes variant). Outcomes and the Kafka offsets are copied as they are; the count
check counts an outcome's copies once (the stores' key: event id, user, outcome name), as the first SQLite schema
kept copies with other times (a retry) apart.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from analytics import AnalyticsError
from analytics.store.base import EventStore, ExposureColumns, OutcomeColumns, TopicPartition

log = logging.getLogger(__name__)


class MigrationError(AnalyticsError):
    """The source is not a readable SQLite event store, the target is not empty, or the counts differ."""


@dataclass(frozen=True)
class SqliteSource:
    """A SQLite event store opened read-only, with the counts and offsets the copy is checked against."""

    path: Path
    db: sqlite3.Connection
    expected: dict[str, int]
    offsets: dict[TopicPartition, int]

    def close(self) -> None:
        self.db.close()


def open_source(path: Path) -> SqliteSource:
    """Open ``path`` read-only and read its counts and Kafka offsets: before a target store is made for it.

    Raises:
        MigrationError: it is not a readable SQLite event store.
    """
    if not path.is_file():
        raise MigrationError(f"no SQLite event store at {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        expected = {
            "exposed_users": db.execute("SELECT COUNT(*) FROM exposures").fetchone()[0],
            "outcomes": db.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM outcomes GROUP BY event_id, user_id, metric)"
            ).fetchone()[0],
        }
        offsets = {
            TopicPartition(t, p): o for t, p, o in db.execute("SELECT topic, partition, last_offset FROM offsets")
        }
    except sqlite3.Error as exc:
        raise MigrationError(f"{path} is not a SQLite event store: {exc}") from exc
    return SqliteSource(path, db, expected, offsets)


def migrate_sqlite(source: SqliteSource, target: EventStore, chunk: int = 500_000) -> dict[str, int]:
    """Copy ``source`` into ``target`` (which must hold no events) and check the counts.

    Returns:
        ``{"exposed_users", "outcomes", "offsets"}`` as copied (equal in source and target).

    Raises:
        MigrationError: see the class.
    """
    db, expected, offsets = source.db, source.expected, source.offsets
    if any(target.counts().values()):
        raise MigrationError(f"the target already holds events ({target.counts()}); migrate into an empty store")
    with tqdm(total=sum(expected.values()), desc="migrating", unit="ev", disable=None) as bar:
        exposures = ExposureColumns()
        rows = db.execute("SELECT first_event_id, experiment, variant, user_id, first_ms, last_ms FROM exposures")
        for event_id, experiment, variant, user, first_ms, last_ms in rows:
            exposures.append((event_id, experiment, variant, user, first_ms))
            if last_ms != first_ms:
                exposures.append((f"{event_id}#latest", experiment, variant, user, last_ms))
            if len(exposures) >= chunk:
                target.apply(exposures, [], {})
                bar.update(len(exposures))
                exposures = ExposureColumns()
        target.apply(exposures, [], {})
        bar.update(len(exposures))
        outcomes = OutcomeColumns()
        for row in db.execute("SELECT event_id, user_id, metric, ts, value FROM outcomes"):
            outcomes.append(row)
            if len(outcomes) >= chunk:
                target.apply([], outcomes, {})
                bar.update(len(outcomes))
                outcomes = OutcomeColumns()
        target.apply([], outcomes, offsets)  # the offsets last: they say the copy is complete
        bar.update(len(outcomes))
    found = target.counts()
    if found != expected:
        raise MigrationError(f"count check failed: the source holds {expected}, the target {found}")
    log.info("migrated %s: %s", source.path, expected)
    return {**expected, "offsets": len(offsets)}
