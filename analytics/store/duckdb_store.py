"""The embedded default event store: immutable Parquet parts in one folder, queried by DuckDB.

Why parts and not one DuckDB database file: a DuckDB file opened for writing by one process cannot be opened by
any other, not even to read, so the dashboard and ``report`` could not read while the consumer writes, and two
consumer processes could not share a store. Here every writer commit is a new immutable part and every reader
queries the parts that are complete; nobody ever waits for anybody.

Layout::

    <store>/mtrank-store.json          format marker
    <store>/parts/<name>/              one commit: exposures.parquet, outcomes.parquet, manifest.json, and
                                       interleaved.parquet, item_outcomes.parquet when it has such rows
                                       (+ the rollups, in a compacted part)
    <store>/tmp/<name>/                a commit being written (not visible)
    <store>/compact.lock               held by the one process compacting

Commit (``apply``): the events are written as Parquet (columns, from Arrow) into ``tmp/<name>/`` together with a
manifest holding the Kafka offsets they bring the store to; files are fsynced, then the folder is renamed into
``parts/`` (atomic), then ``parts/`` is fsynced. A crash before the rename leaves nothing visible, after it
everything: events and offsets become durable together, so nothing is lost or counted twice.

Raw events are append-only; nothing is upserted. Deduplication by event id and the first exposure are computed
when reading (``analytics.sql_compiler``). Compaction merges many small parts into one, deduplicating outcomes
while it is at it (against each other and against the other compacted parts, so compacted parts never share an
event), and writes the merged part's rollups next to its raw events:

    first_exposures.parquet   per experiment and user key: the first exposure (``sql_compiler.exposure_rollup``)
    outcome_rollup.parquet    per user key and hour: counts, sums and time ranges per outcome name, split at the
                              user's first exposure (``sql_compiler.outcome_rollup``)

Reports read the rollups of compacted parts (about one row per user instead of one per event) plus the raw events
of the parts not compacted yet; the raw events of a compacted part are read only where a rolled-up row straddles
a boundary of the query (first exposure, window end, cut point). The merged part lists the parts it replaces;
readers hide replaced parts, and a query that raced with their deletion is retried.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from analytics import interleaving_sql as isql
from analytics import sql_compiler as sql
from analytics.store.base import Exposures, Interleaved, ItemOutcomes, Outcomes, TopicPartition
from analytics.store.exceptions import StoreClosed, StoreError
from analytics.store.warehouse import (
    EXPOSURE_SCHEMA,
    ITEM_OUTCOME_SCHEMA,
    OUTCOME_SCHEMA,
    WarehouseEventStore,
    event_tables,
)
from proto import limits

log = logging.getLogger(__name__)

FORMAT = "mtrank-duckdb-events"
FORMAT_VERSION = 1
MARKER = "mtrank-store.json"
SQLITE_HEADER = b"SQLite format 3\x00"

_READ_RETRIES = 3
ABANDONED_AFTER_S = 3600
USER_KEY = "user_key"
USER_CHECK = "user_check"
ROLLUP_BUCKET_MS = 3_600_000
MAX_ROLLUP_METRICS = 64  # outcome names beyond the most frequent 64 of a part are read raw
# Outcome names longer than this are read raw too: the rollup query holds each rolled-up name 9 times, so 64
# names of 1 MB (any producer writes outcome names) made a 567 MB query, and compaction took 21.6 s, not 0.6
# s. Every name the contract admits (proto/limits.py) is rolled up: it has no more characters than bytes.
MAX_ROLLUP_NAME_CHARS = limits.MAX_NAME_BYTES
KEY_FUNCTION = "md5_number_lower"  # the low 64 bits of md5: stable across DuckDB versions
CHECK_FUNCTION = "md5_number_upper"  # the other 64 bits: a clash of the key shows as two checks
INTERLEAVING_KINDS = ("interleaved", "item_outcomes")  # files only parts with such rows have


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _empty_relation(schema: pa.Schema) -> exp.Select:
    """A relation with ``schema``'s columns and the user key, and no rows (no such events in the store yet)."""
    types = {pa.string(): "varchar", pa.int64(): "bigint", pa.float64(): "double"}
    columns = [(f.name, types[f.type]) for f in schema] + [(USER_KEY, "ubigint"), (USER_CHECK, "ubigint")]
    return exp.select(
        *(
            exp.alias_(exp.Cast(this=exp.Null(), to=exp.DataType.build(t, dialect="duckdb")), n)
            for n, t in columns
        )
    ).where(exp.false())


def _copy_to(select: exp.Expr, target: Path) -> str:
    """DuckDB's ``COPY (select) TO 'target' (FORMAT parquet)``."""
    query = select.sql(dialect=sql.DIALECTS["duckdb"])
    return f"COPY ({query}) TO {exp.Literal.string(str(target)).sql('duckdb')} (FORMAT parquet)"


def _parquet(files: list[Path]) -> exp.Expr:
    return exp.func("read_parquet", exp.Array(expressions=[exp.Literal.string(str(f)) for f in files]))


class _Part:
    """One committed part: its folder and manifest."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.name: str = manifest["name"]
        self.exposures: int = manifest["exposures"]
        self.outcomes: int = manifest["outcomes"]
        self.unique: bool = manifest["unique"]
        self.replaces: list[str] = manifest["replaces"]
        self.rollup: dict[str, Any] | None = manifest.get("rollup")  # {"metrics": [...], "bucket_ms": ...}
        self.offsets: dict[TopicPartition, tuple[int, str]] = {
            TopicPartition(t, p): (o, source) for t, p, o, source in manifest["offsets"]
        }
        self.interleaving = {kind for kind in INTERLEAVING_KINDS if self.file(kind).is_file()}

    @property
    def rows(self) -> int:
        return self.exposures + self.outcomes

    def file(self, kind: str) -> Path:
        return self.folder / f"{kind}.parquet"

    def rolled(self) -> sql.RolledPart | None:
        """The part as the compiler reads a compacted part (None: it has no rollups)."""
        if self.rollup is None:
            return None
        exposures, outcomes = (
            _parquet([self.file(kind)]) if count else _empty_relation(schema)
            for kind, count, schema in (
                ("exposures", self.exposures, EXPOSURE_SCHEMA),
                ("outcomes", self.outcomes, OUTCOME_SCHEMA),
            )
        )
        return sql.RolledPart(
            exposures=exposures,
            outcomes=outcomes,
            first_exposures=_parquet([self.file("first_exposures")]),
            outcome_rollup=_parquet([self.file("outcome_rollup")]),
            metrics=tuple(self.rollup["metrics"]),
            bucket_ms=int(self.rollup["bucket_ms"]),
        )


def _manifest(
    name: str, exposures: int, outcomes: int, unique: bool, offsets: Mapping[TopicPartition, tuple[int, str]],
    replaces: list[str], rollup: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": name,
        "exposures": exposures,
        "outcomes": outcomes,
        "unique": unique,
        "offsets": [[tp.topic, tp.partition, o, src] for tp, (o, src) in sorted(offsets.items())],
        "replaces": replaces,
        **({"rollup": rollup} if rollup is not None else {}),
    }


def _latest_offsets(parts: list[_Part]) -> dict[TopicPartition, tuple[int, str]]:
    """Per partition, the offset written by the most recent commit that names it."""
    latest: dict[TopicPartition, tuple[int, str]] = {}
    for part in parts:
        for tp, (offset, source) in part.offsets.items():
            if tp not in latest or source > latest[tp][1]:
                latest[tp] = (offset, source)
    return latest


class DuckDBEventStore(WarehouseEventStore):
    """Event store in a folder of Parquet parts, queried by an in-process DuckDB.

    Args:
        path: the store folder (created, with its parents, when missing).
        attribution_window_ms: see ``EventStore``.
        compact_parts: compact once this many parts are visible (0: never compact automatically).
        threads: DuckDB worker threads (None: one per core).
        memory_limit: DuckDB memory limit, e.g. ``"4GB"`` (None: DuckDB's default, 80% of RAM).
        rollup_bucket_ms: the time bucket of the outcome rollups that compactions write (a rolled-up row whose
            events straddle a boundary of a query is read raw: smaller buckets straddle less, larger ones sum more).
    """

    dialect = "duckdb"

    def __init__(
        self,
        path: str | Path,
        attribution_window_ms: int | None = None,
        compact_parts: int = 16,
        threads: int | None = None,
        memory_limit: str | None = None,
        rollup_bucket_ms: int = ROLLUP_BUCKET_MS,
    ) -> None:
        super().__init__(attribution_window_ms)
        self.path = Path(path)
        self.compact_parts = compact_parts
        self.rollup_bucket_ms = rollup_bucket_ms
        self._lock = threading.RLock()
        self._manifests: dict[str, _Part] = {}
        self._writer = secrets.token_hex(6)
        self._writer_lock: IO[str] | None = None
        self._open_layout()
        config: dict[str, Any] = {"preserve_insertion_order": False}  # queries that need an order ask for it
        if threads is not None:
            config["threads"] = threads
        if memory_limit is not None:
            config["memory_limit"] = memory_limit
        self._db: duckdb.DuckDBPyConnection | None = duckdb.connect(":memory:", config=config)
        self._config = config
        self._compactor: threading.Thread | None = None
        self._merger: duckdb.DuckDBPyConnection | None = None

    # ---------------------------------------------------------------- layout

    def _open_layout(self) -> None:
        if self.path.is_file():
            with self.path.open("rb") as f:
                header = f.read(len(SQLITE_HEADER))
            if header == SQLITE_HEADER:
                raise StoreError(
                    f"{self.path} is a SQLite event store (the previous format); convert it with "
                    f"`python -m analytics migrate --from {self.path} --to <new store folder>`"
                )
            raise StoreError(f"{self.path} is a file, not an event store folder")
        marker = self.path / MARKER
        try:
            if self.path.is_dir() and any(self.path.iterdir()) and not marker.is_file():
                raise StoreError(f"{self.path} is a folder but not an event store (no {MARKER})")
            (self.path / "parts").mkdir(parents=True, exist_ok=True)
            (self.path / "tmp").mkdir(exist_ok=True)
            if not marker.is_file():
                tmp = self.path / f".{MARKER}.{os.getpid()}"
                tmp.write_text(json.dumps({"format": FORMAT, "version": FORMAT_VERSION}))
                os.replace(tmp, marker)
            found = json.loads(marker.read_text())
        except OSError as exc:
            raise StoreError(f"cannot open the event store {self.path}: {exc}") from exc
        except ValueError as exc:  # not JSON, or not text
            raise StoreError(f"{marker} is corrupt: {exc}") from exc
        if not isinstance(found, dict) or found.get("format") != FORMAT or found.get("version") != FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format {found}, this code reads {FORMAT} v{FORMAT_VERSION}")

    def _become_writer(self) -> None:
        """Before the first write: take this writer's lock, then clean what dead writers left behind.

        Each writer holds an exclusive lock on ``tmp/<writer>.lock`` for its lifetime (flock: it works across
        processes and containers sharing the folder, unlike process ids). A writer's lock that can be taken means
        the writer is gone: its half-written commits are removed. Readers never clean anything.
        """
        if self._writer_lock is not None:
            return
        tmp = self.path / "tmp"
        while True:  # a writer cleaning up at this very moment may remove the file before it is locked: redo
            lock = (tmp / f"{self._writer}.lock").open("a")
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(lock.fileno()).st_nlink:
                break
            lock.close()
        self._writer_lock = lock
        for other in tmp.glob("*.lock"):
            if other.stem == self._writer:
                continue
            with other.open("a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer
                for folder in tmp.glob(f"*-{other.stem}-*"):
                    shutil.rmtree(folder, ignore_errors=True)
                other.unlink(missing_ok=True)
        for folder in tmp.iterdir():  # an hour-old commit without its writer's lock file: abandoned too
            stale = folder.is_dir() and time.time() - folder.stat().st_mtime > ABANDONED_AFTER_S
            if stale and not (tmp / f"{folder.name.split('-')[1]}.lock").exists():
                shutil.rmtree(folder, ignore_errors=True)
        parts = self._scan()
        replaced = {name for part in parts for name in part.replaces}
        for part in parts:
            if part.name in replaced:
                shutil.rmtree(part.folder, ignore_errors=True)

    def _scan(self) -> list[_Part]:
        """Every complete part folder (replaced ones included), cached by name: parts never change."""
        parts = []
        try:
            names = sorted(os.listdir(self.path / "parts"))
        except FileNotFoundError as exc:
            raise StoreError(f"event store {self.path} has gone: {exc}") from exc
        for name in names:
            part = self._manifests.get(name)
            if part is None:
                path = self.path / "parts" / name / "manifest.json"
                try:
                    part = _Part(self.path / "parts" / name, json.loads(path.read_text()))
                except FileNotFoundError:
                    continue  # deleted by a compaction since the listing
                except (ValueError, KeyError, TypeError) as exc:  # not JSON, or a manifest lacking a key
                    raise StoreError(f"{path} is corrupt: {exc!r}") from exc
                self._manifests[name] = part
            parts.append(part)
        for gone in set(self._manifests) - set(names):
            del self._manifests[gone]
        return parts

    def _visible(self) -> list[_Part]:
        parts = self._scan()
        replaced = {name for part in parts for name in part.replaces}
        return [p for p in parts if p.name not in replaced]

    @property
    def db(self) -> duckdb.DuckDBPyConnection:
        if self._db is None:
            raise StoreClosed(f"event store {self.path} is closed")
        return self._db

    # ---------------------------------------------------------------- writes

    def _new_name(self) -> str:
        """Part names sort by time; the middle field is the writer (see ``_become_writer``)."""
        return f"{time.time_ns():020d}-{self._writer}-{secrets.token_hex(4)}"

    def _commit(
        self,
        name: str,
        write: Any,
        offsets: Mapping[TopicPartition, tuple[int, str]],
        unique: bool,
        replaces: list[str],
    ) -> None:
        """Write a part with ``write(folder) -> (exposures, outcomes, rollup)`` and make it visible atomically."""
        tmp = self.path / "tmp" / name
        tmp.mkdir()
        try:
            n_exposures, n_outcomes, rollup = write(tmp)
            (tmp / "manifest.json").write_text(
                json.dumps(_manifest(name, n_exposures, n_outcomes, unique, offsets, replaces, rollup))
            )
            for file in tmp.iterdir():
                _fsync(file)
            _fsync(tmp)
            os.rename(tmp, self.path / "parts" / name)
            _fsync(self.path / "parts")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def apply(
        self,
        exposures: Exposures,
        outcomes: Outcomes,
        offsets: Mapping[TopicPartition, int],
        *,
        interleaved: Interleaved = (),
        item_outcomes: ItemOutcomes = (),
    ) -> None:
        tables = dict(event_tables(exposures, outcomes, interleaved, item_outcomes))  # outside the lock
        with self._lock:
            self.db  # noqa: B018 - raises when closed
            self._become_writer()
            self._refuse_offsets_behind(offsets, self.offsets())
            if not (tables or offsets):
                return
            name = self._new_name()

            def write(folder: Path) -> tuple[int, int, None]:
                for kind, table in tables.items():
                    self._write_keyed(table, folder / f"{kind}.parquet")
                rows = {kind: table.num_rows for kind, table in tables.items()}
                return rows.get("exposures", 0), rows.get("outcomes", 0), None

            self._commit(
                name, write, {TopicPartition(*tp): (o, name) for tp, o in offsets.items()}, False, []
            )
            due = self.compact_parts and len(self._visible()) >= self.compact_parts
            if due and (self._compactor is None or not self._compactor.is_alive()):
                # In the background: the writer keeps appending while older parts are merged.
                self._compactor = threading.Thread(
                    target=self._compact_logged, name="store-compaction", daemon=True
                )
                self._compactor.start()

    def _compact_logged(self) -> None:
        try:
            self.compact()
        except Exception:  # noqa: BLE001 - a failed compaction leaves the parts as they were; the next one retries
            log.exception("compacting %s failed; the parts stay as they are", self.path)

    def _write_keyed(self, table: pa.Table, target: Path) -> None:
        """Write ``table`` as Parquet with its ``user_key``: the low 64 bits of md5(user_id), a stable hash that
        joins several times faster than the text id, and ``user_check``, the other 64 bits, with which queries
        check that a key never stands for two users."""
        with_key = exp.select(
            exp.Star(),
            exp.alias_(exp.func(KEY_FUNCTION, exp.column("user_id")), USER_KEY),
            exp.alias_(exp.func(CHECK_FUNCTION, exp.column("user_id")), USER_CHECK),
        ).from_("batch")
        self.db.register("batch", table)
        try:
            self.db.execute(_copy_to(with_key, target))
        finally:
            self.db.unregister("batch")

    def compact(self, everything: bool = False) -> bool:
        """Merge parts into one compacted part (outcomes deduplicated, rollups written); returns False when
        another process is compacting.

        Without ``everything`` the largest part is kept unless the others together are at least as large, so
        each event is rewritten a logarithmic number of times as the store grows.
        """
        with self._lock:
            self._become_writer()
        lock = (self.path / "compact.lock").open("a")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            with self._lock:
                visible = self._visible()
            parts = sorted(visible, key=lambda p: p.rows)
            if not everything and len(parts) > 1 and sum(p.rows for p in parts[:-1]) < parts[-1].rows:
                parts = parts[:-1]
            if len(parts) < 2 and not (parts and parts[0].rollup is None):
                return True
            merged = {p.name for p in parts}
            # parts are immutable: appends and reads go on meanwhile
            self._merge(parts, [p for p in visible if p.name not in merged])
            return True
        finally:
            lock.close()

    def _merge(self, parts: list[_Part], others: list[_Part]) -> None:
        """Write ``parts`` as one compacted part: their outcomes deduplicated and without the events of the other
        compacted parts (``others`` that are unique), and the rollups of both kinds of events."""
        name = self._new_name()
        db = self._merge_db
        bucket_ms = self.rollup_bucket_ms

        def files(of: list[_Part], kind: str) -> list[Path]:
            return [p.file(kind) for p in of if (p.exposures if kind == "exposures" else p.outcomes)]

        def write(folder: Path) -> tuple[int, int, dict[str, Any]]:
            exposures, outcomes = files(parts, "exposures"), files(parts, "outcomes")
            known = files([p for p in others if p.unique], "outcomes")
            if exposures:
                db.execute(_copy_to(exp.select("*").from_(_parquet(exposures)), folder / "exposures.parquet"))
            if outcomes:
                fresh = sql.fresh_outcomes(
                    sql.Relations(
                        exposures=None,
                        outcomes_unique=_parquet(known) if known else None,
                        outcomes_raw=_parquet(outcomes),
                        user_key=USER_KEY,
                        user_check=USER_CHECK,
                    )
                )
                assert fresh is not None  # None only without raw outcomes, which this part has
                db.execute(_copy_to(fresh, folder / "outcomes.parquet"))
            counts = [
                pq.ParquetFile(folder / f"{kind}.parquet").metadata.num_rows if present else 0
                for kind, present in (("exposures", exposures), ("outcomes", outcomes))
            ]
            first = (
                _parquet([folder / "exposures.parquet"]) if counts[0] else _empty_relation(EXPOSURE_SCHEMA)
            )
            db.execute(_copy_to(sql.exposure_rollup(first), folder / "first_exposures.parquet"))
            metrics: list[str] = []
            if counts[1]:
                frequent = (
                    exp.select("metric").from_(_parquet([folder / "outcomes.parquet"]))
                    .where(exp.Length(this=exp.column("metric")) <= MAX_ROLLUP_NAME_CHARS)
                    .group_by("metric").order_by(exp.Count(this=exp.Star()).desc(), "metric")
                    .limit(MAX_ROLLUP_METRICS)
                )  # fmt: skip
                metrics = [r[0] for r in db.execute(frequent.sql(dialect=sql.DIALECTS["duckdb"])).fetchall()]
            # a user's outcomes split at the earliest exposure of that user anywhere in the store
            all_exposures = [folder / "exposures.parquet"] * bool(counts[0]) + files(others, "exposures")
            splits = (
                exp.select(USER_KEY, "ts").from_(_parquet(all_exposures))
                if all_exposures
                else _empty_relation(EXPOSURE_SCHEMA)
            )
            relation = (
                _parquet([folder / "outcomes.parquet"]) if counts[1] else _empty_relation(OUTCOME_SCHEMA)
            )
            rollup = sql.outcome_rollup(relation, splits, metrics, bucket_ms, USER_KEY, USER_CHECK)
            db.execute(_copy_to(rollup, folder / "outcome_rollup.parquet"))
            for kind in INTERLEAVING_KINDS:  # copies of one event are identical rows: DISTINCT drops them
                interleaving = [p.file(kind) for p in parts if kind in p.interleaving]
                if interleaving:
                    distinct = exp.select("*").distinct().from_(_parquet(interleaving))
                    db.execute(_copy_to(distinct, folder / f"{kind}.parquet"))
            return counts[0], counts[1], {"metrics": metrics, "bucket_ms": bucket_ms}

        self._commit(name, write, _latest_offsets(parts), True, [p.name for p in parts])
        for part in parts:
            shutil.rmtree(part.folder, ignore_errors=True)
        log.info("compacted %d parts of %s into %s", len(parts), self.path, name)

    @property
    def _merge_db(self) -> duckdb.DuckDBPyConnection:
        """Compaction's own connection, so merging never holds up appends and queries on ``db``."""
        if self._merger is None:
            self._merger = duckdb.connect(":memory:", config=self._config)
        return self._merger

    def offsets(self) -> dict[TopicPartition, int]:
        with self._lock:
            return {tp: offset for tp, (offset, _) in _latest_offsets(self._visible()).items()}

    # ---------------------------------------------------------------- reads

    def relations(self) -> sql.Relations | None:
        parts = self._visible()
        if not parts:
            return None
        # the compiler wants the largest rolled part first
        by_size = sorted(parts, key=lambda p: p.exposures, reverse=True)
        rolled = [r for r in (p.rolled() for p in by_size) if r is not None]
        rest = [p for p in parts if p.rollup is None]
        exposure_files = [p.file("exposures") for p in rest if p.exposures]
        with_outcomes = [p for p in rest if p.outcomes]
        base = max((p for p in with_outcomes if p.unique), key=lambda p: p.outcomes, default=None)
        raw_files = [p.file("outcomes") for p in with_outcomes if p is not base]
        raw: exp.Expr | None = None
        if raw_files:
            raw = _parquet(raw_files)
        elif base is None and not rolled:
            raw = _empty_relation(OUTCOME_SCHEMA)  # no outcomes yet
        return sql.Relations(
            _parquet(exposure_files) if exposure_files else None,
            outcomes_unique=_parquet([base.file("outcomes")]) if base else None,
            outcomes_raw=raw,
            user_key=USER_KEY,
            user_check=USER_CHECK,
            rollups=tuple(rolled),
        )

    def interleaving_relations(self) -> isql.InterleavingRelations | None:
        parts = self._visible()
        interleaved = [p.file("interleaved") for p in parts if "interleaved" in p.interleaving]
        if not interleaved:
            return None
        item_outcomes = [p.file("item_outcomes") for p in parts if "item_outcomes" in p.interleaving]
        clicks = _parquet(item_outcomes) if item_outcomes else _empty_relation(ITEM_OUTCOME_SCHEMA)
        return isql.InterleavingRelations(_parquet(interleaved), clicks)

    def _query(self, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        cursor = self.db.execute(query)
        return [d[0] for d in cursor.description], cursor.fetchall()

    def _run(self, build: Callable[[sql.Relations], str]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Build the query on the parts visible now and run it; rebuild it when a part was compacted away."""
        for attempt in range(_READ_RETRIES):
            with self._lock:
                try:
                    return super()._run(build)
                except duckdb.IOException as exc:
                    if attempt == _READ_RETRIES - 1:
                        raise StoreError(f"{self.path}: a part cannot be read: {exc}") from exc
                    log.debug("a part was compacted away during a query; retrying")
                except duckdb.InvalidInputException as exc:  # a part file truncated or overwritten on disk
                    raise StoreError(f"{self.path}: a part cannot be read: {exc}") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._compactor is not None:
            self._compactor.join()  # a merge half done would only be redone, but finishing it is cheaper
        with self._lock:
            for connection in (self._db, self._merger):
                if connection is not None:
                    connection.close()
            self._db = self._merger = None
            if self._writer_lock is not None:
                (self.path / "tmp" / f"{self._writer}.lock").unlink(missing_ok=True)
                self._writer_lock.close()
                self._writer_lock = None
