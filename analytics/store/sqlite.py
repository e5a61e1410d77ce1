"""SQLite EventStore: one file, WAL mode, events and offsets committed in one transaction.

Several consumer processes of one group may share the file (each applies its own partitions; SQLite serialises
the writers). Outcomes live in a WITHOUT ROWID table keyed by (user, event id): a redelivered event is ignored by
``INSERT OR IGNORE`` (an event id always belongs to one user) and attribution reads a user's outcomes in one range
scan.
"""

from __future__ import annotations

import itertools
import operator
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from analytics.store.base import EventStore, ExposureRow, OutcomeRow, TopicPartition
from analytics.store.exceptions import OffsetBackwards, StoreClosed, StoreError

_FOREVER = 1 << 62
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exposures (
    experiment TEXT NOT NULL,
    user_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    first_ms INTEGER NOT NULL,
    first_event_id TEXT NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (experiment, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    ts INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (user_id, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""
# The first exposure is the earliest by (time, event id), whatever order the events arrive in.
_UPSERT_EXPOSURE = """
INSERT INTO exposures (experiment, user_id, variant, first_ms, first_event_id, last_ms)
VALUES (?2, ?4, ?3, ?5, ?1, ?5)
ON CONFLICT (experiment, user_id) DO UPDATE SET
    variant = CASE WHEN (excluded.first_ms, excluded.first_event_id) < (first_ms, first_event_id)
                   THEN excluded.variant ELSE variant END,
    first_event_id = CASE WHEN (excluded.first_ms, excluded.first_event_id) < (first_ms, first_event_id)
                          THEN excluded.first_event_id ELSE first_event_id END,
    first_ms = MIN(first_ms, excluded.first_ms),
    last_ms = MAX(last_ms, excluded.last_ms)
"""
_EXPOSURE_KEY = operator.itemgetter(1, 3)  # ExposureRow (experiment, user): the table's key order
_OUTCOME_KEY = operator.itemgetter(1, 0)  # OutcomeRow (user, event_id)
_INSERT_OUTCOMES = "INSERT OR IGNORE INTO outcomes (event_id, user_id, metric, ts, value) VALUES "
_ROWS_PER_STATEMENT = 100  # multi-row VALUES: one statement step per 100 rows (about 20% less CPU per event)
_INSERT_OUTCOME_BLOCK = _INSERT_OUTCOMES + ", ".join(["(?, ?, ?, ?, ?)"] * _ROWS_PER_STATEMENT)
_USER_METRIC_VALUES = """
SELECT e.variant,
       COALESCE(SUM(CASE WHEN o.ts >= e.first_ms AND o.ts < e.first_ms + :window AND o.ts <= :until
                         THEN o.value END), 0.0),
       COUNT(CASE WHEN o.ts >= e.first_ms AND o.ts < e.first_ms + :window AND o.ts <= :until THEN 1 END),
       COALESCE(SUM(CASE WHEN o.ts < e.first_ms THEN o.value END), 0.0)
FROM exposures AS e
LEFT JOIN outcomes AS o ON o.user_id = e.user_id AND o.metric = :metric
WHERE e.experiment = :experiment AND e.first_ms <= :until
GROUP BY e.user_id
ORDER BY e.user_id
"""


def _insert_outcomes(db: sqlite3.Connection, rows: Sequence[OutcomeRow]) -> None:
    full = len(rows) - len(rows) % _ROWS_PER_STATEMENT
    blocks = (
        tuple(itertools.chain.from_iterable(rows[i : i + _ROWS_PER_STATEMENT]))
        for i in range(0, full, _ROWS_PER_STATEMENT)
    )
    db.executemany(_INSERT_OUTCOME_BLOCK, blocks)
    if full < len(rows):
        db.executemany(_INSERT_OUTCOMES + "(?, ?, ?, ?, ?)", rows[full:])


class SQLiteEventStore(EventStore):
    """Durable store in one SQLite file.

    Args:
        path: database file (created with its parent folder).
        attribution_window_ms: see ``EventStore``.
        synchronous: SQLite ``synchronous`` pragma; NORMAL survives process crashes, FULL also power loss.
        busy_timeout_s: how long a writer waits for another process's transaction.
        cache_mib: SQLite page cache; inserts slow down sharply once the hot part of the B-trees exceeds it.
    """

    def __init__(
        self,
        path: str | Path,
        attribution_window_ms: int | None = None,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = 30.0,
        cache_mib: int = 64,
    ) -> None:
        super().__init__(attribution_window_ms)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, timeout=busy_timeout_s, check_same_thread=False
            )
            db = self._db
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),))
            elif int(row[0]) != _SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {row[0]}, this code reads {_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the event store {self.path}: {exc}") from exc

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreClosed(f"event store {self.path} is closed")
        return self._db

    def apply(
        self,
        exposures: Sequence[ExposureRow],
        outcomes: Sequence[OutcomeRow],
        offsets: Mapping[TopicPartition, int],
    ) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for (topic, partition), offset in offsets.items():
                row = db.execute(
                    "SELECT last_offset FROM offsets WHERE topic = ? AND partition = ?", (topic, partition)
                ).fetchone()
                if row is not None and offset < row[0]:
                    raise OffsetBackwards(
                        f"{topic}[{partition}]: offset {offset} is behind the applied offset {row[0]}"
                    )
            # in key order: B-tree inserts then touch neighbouring pages (several times faster than arrival order)
            if exposures:
                db.executemany(_UPSERT_EXPOSURE, sorted(exposures, key=_EXPOSURE_KEY))
            if outcomes:
                _insert_outcomes(db, sorted(outcomes, key=_OUTCOME_KEY))
            db.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (topic, partition) "
                "DO UPDATE SET last_offset = excluded.last_offset",
                [(topic, partition, offset) for (topic, partition), offset in offsets.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def offsets(self) -> dict[TopicPartition, int]:
        rows = self.db.execute("SELECT topic, partition, last_offset FROM offsets")
        return {TopicPartition(topic, partition): offset for topic, partition, offset in rows}

    def experiments(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT experiment FROM exposures ORDER BY 1")]

    def variant_counts(self, experiment_key: str) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT variant, COUNT(*) FROM exposures WHERE experiment = ? GROUP BY variant ORDER BY variant",
            (experiment_key,),
        )
        return dict(rows.fetchall())

    def user_metric_values(
        self, experiment_key: str, metric: str, until_ms: int | None = None
    ) -> Iterator[tuple[str, float, int, float]]:
        params = {
            "experiment": experiment_key,
            "metric": metric,
            "until": _FOREVER if until_ms is None else until_ms,
            "window": _FOREVER if self.attribution_window_ms is None else self.attribution_window_ms,
        }
        # A separate cursor streams the rows; a long read does not block writers in WAL mode.
        yield from self.db.cursor().execute(_USER_METRIC_VALUES, params)

    def exposure_timeline(self, experiment_key: str, bucket_ms: int) -> list[tuple[int, str, int]]:
        if bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
        rows = self.db.execute(
            "SELECT (first_ms / ?1) * ?1 AS bucket, variant, COUNT(*) FROM exposures WHERE experiment = ?2 "
            "GROUP BY bucket, variant ORDER BY bucket, variant",
            (bucket_ms, experiment_key),
        )
        return [(int(b), v, int(n)) for b, v, n in rows]

    def time_range(self, experiment_key: str) -> tuple[int, int]:
        lo, hi = self.db.execute(
            "SELECT MIN(first_ms), MAX(last_ms) FROM exposures WHERE experiment = ?", (experiment_key,)
        ).fetchone()
        return (0, 0) if lo is None else (int(lo), int(hi))

    def metrics(self) -> list[str]:
        # Skip-scan over the (user_id, metric, ...) key would still visit every user; DISTINCT is fine here.
        return [r[0] for r in self.db.execute("SELECT DISTINCT metric FROM outcomes ORDER BY 1")]

    def counts(self) -> dict[str, int]:
        (exposed,) = self.db.execute("SELECT COUNT(*) FROM exposures").fetchone()
        (outcomes,) = self.db.execute("SELECT COUNT(*) FROM outcomes").fetchone()
        return {"exposed_users": int(exposed), "outcomes": int(outcomes)}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
