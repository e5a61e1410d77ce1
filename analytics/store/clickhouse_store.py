"""ClickHouse as the scale-out event store: the same compiled SQL, run by a ClickHouse server (or chDB).

At scale no Python process sits on the event path: ClickHouse ingests the Kafka topics itself
(``deploy/clickhouse/ingest.sql``: Kafka table engine + materialised views decoding ``EventBatch``) into the tables
of ``clickhouse_schema.sql``, and ``report``/``serve`` run the compiled queries there. ``apply`` exists for
migration and tests: it inserts events first and offsets second, which is safe without transactions because
outcomes are deduplicated by event id when read (a replay after a crash between the two counts nothing twice).

Two clients run the SQL: clickhouse-connect against a server (``clickhouse://host:port/db``) and chDB, ClickHouse's
engine in-process (``chdb:///path``), which the tests use to prove the ClickHouse dialect on the same fixtures.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
from sqlglot import exp

from analytics import interleaving_sql as isql
from analytics import sql_compiler as sql
from analytics.store.base import Exposures, Interleaved, ItemOutcomes, Outcomes, TopicPartition
from analytics.store.exceptions import StoreError, StoreUnreachable
from analytics.store.warehouse import WarehouseEventStore, event_tables

SCHEMA_SQL = Path(__file__).with_name("clickhouse_schema.sql")
DEFAULT_PORT = 8123
# Unmatched LEFT JOIN columns are NULL (as in standard SQL and DuckDB), not the type's default.
QUERY_SETTINGS = {"join_use_nulls": 1}


_CLIENT_LOGGERS = ("urllib3.connectionpool", "clickhouse_connect")
"""Loggers of the HTTP client that warn about each failed connection attempt."""


@contextlib.contextmanager
def _quiet_client() -> Iterator[None]:
    """Silence the HTTP client's warnings while connecting: a failure is one ``StoreUnreachable`` line."""
    loggers = [logging.getLogger(name) for name in _CLIENT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in one line: the innermost OS error's text (``Connection refused``, ``Name or
    service not known``) when there is one, else the first line of ``exc``."""
    cause: BaseException | None = exc
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            reason = cause.strerror
        cause = cause.__cause__ or cause.__context__
    return reason


def schema_statements() -> list[str]:
    """The CREATE TABLE statements of the store's tables."""
    text = "\n".join(
        line for line in SCHEMA_SQL.read_text().splitlines() if not line.lstrip().startswith("--")
    )
    return [s.strip() for s in text.split(";") if s.strip()]


class ClickHouseClient(abc.ABC):
    """What the store needs from a ClickHouse connection: queries, statements, inserts, in ``database``."""

    database: str

    @abc.abstractmethod
    def query(self, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows of ``query`` (run with ``QUERY_SETTINGS``)."""

    @abc.abstractmethod
    def command(self, statement: str) -> None:
        """Run a statement without a result."""

    @abc.abstractmethod
    def insert(self, table: str, data: pa.Table) -> None:
        """Append ``data`` to ``table``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""


class ConnectClient(ClickHouseClient):
    """A ClickHouse server over HTTP (clickhouse-connect)."""

    def __init__(self, host: str, port: int, database: str, user: str, password: str) -> None:
        import clickhouse_connect

        self.database = database
        from clickhouse_connect.driver.exceptions import ClickHouseError

        self._error = ClickHouseError
        try:
            with _quiet_client():
                admin = clickhouse_connect.get_client(
                    host=host, port=port, username=user, password=password, connect_timeout=5
                )
                name = exp.to_identifier(database).sql("clickhouse")
                admin.command(f"CREATE DATABASE IF NOT EXISTS {name}")
                admin.close()
                self._client = clickhouse_connect.get_client(
                    host=host, port=port, username=user, password=password, database=database,
                    settings=QUERY_SETTINGS, connect_timeout=5,
                )  # fmt: skip
        except ClickHouseError as exc:
            raise StoreUnreachable(f"cannot reach ClickHouse at {host}:{port}: {_reason(exc)}") from exc

    def query(self, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        result = self._client.query(query)
        return list(result.column_names), [tuple(r) for r in result.result_rows]

    def command(self, statement: str) -> None:
        self._client.command(statement)

    def insert(self, table: str, data: pa.Table) -> None:
        self._client.insert_arrow(table, data)

    def close(self) -> None:
        self._client.close()


@contextlib.contextmanager
def _native_stderr() -> Iterator[Callable[[], list[str]]]:
    """Holds back what native code writes to file descriptor 2 inside the block; the function it yields returns
    those lines (after the block), so an error can carry them in one line instead of leaving them on the screen."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            lines: list[str] = []
            yield lambda: lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines += [line.strip() for line in held.read().decode(errors="replace").splitlines() if line.strip()]


class ChdbClient(ClickHouseClient):
    """ClickHouse's engine in this process (chDB), one database of it.

    chDB runs one embedded server per process, at one data path: clients share it (each in its own database).
    ``path`` None uses a temporary server (or the one already running) and a fresh database that ``close`` drops.
    """

    _server: dict[str, Any] = {}  # "session", "path", "tmp", "clients"
    _lock = threading.Lock()

    def __init__(self, path: str | None = None, database: str | None = None) -> None:
        from chdb import session

        with self._lock:
            server = ChdbClient._server
            if not server:
                tmp: tempfile.TemporaryDirectory[str] | None = None
                if path is None:
                    tmp = tempfile.TemporaryDirectory(prefix="chdb-")
                    data = tmp.name
                else:
                    data = str(Path(path) / "data")
                Path(data).mkdir(parents=True, exist_ok=True)
                with _native_stderr() as printed:
                    try:
                        started: Any = session.Session(data)
                    except RuntimeError as exc:  # e.g. another process holds the path: chDB locks the folder
                        started = exc
                if isinstance(started, RuntimeError):
                    # chDB's engine writes the cause to file descriptor 2 itself ("Cannot lock file ...")
                    reason = " ".join([*printed(), str(started)]).strip() or type(started).__name__
                    raise StoreError(
                        f"chDB cannot open {data} (one process per chDB store path): {reason}"
                    ) from None
                server.update(session=started, path=path, data=data, tmp=tmp, clients=0)
            elif path is not None and server["path"] != path:
                raise StoreError(
                    f"chDB already runs at {server['path'] or 'a temporary path'} in this process"
                )
            server["clients"] += 1
            self._session = server["session"]
        self._temporary = database is None
        self.database = database or f"t{secrets.token_hex(6)}"
        self._session.query(
            f"CREATE DATABASE IF NOT EXISTS {exp.to_identifier(self.database).sql('clickhouse')}"
        )
        self._settings = ", ".join(f"{k}={v}" for k, v in QUERY_SETTINGS.items())
        self._folder = Path(tempfile.gettempdir())

    @property
    def data_path(self) -> Path:
        """The embedded server's data folder (its ``format_schemas/`` holds .proto files for Protobuf input)."""
        return Path(ChdbClient._server["data"])

    def query(self, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            table = self._session.query(f"{query} SETTINGS {self._settings}", "ArrowTable")
        return table.column_names, [tuple(r.values()) for r in table.to_pylist()]

    def command(self, statement: str) -> None:
        with self._lock:
            self._session.query(statement)

    def insert(self, table: str, data: pa.Table) -> None:
        with tempfile.NamedTemporaryFile(suffix=".parquet", dir=self._folder) as f:
            pq.write_table(data, f.name)
            source = exp.Literal.string(f.name).sql("clickhouse")  # the folder's name may hold a quote
            self.command(f"INSERT INTO {table} SELECT * FROM file({source}, Parquet)")

    def close(self) -> None:
        with self._lock:
            if self._temporary:
                self._session.query(
                    f"DROP DATABASE IF EXISTS {exp.to_identifier(self.database).sql('clickhouse')}"
                )
            server = ChdbClient._server
            server["clients"] -= 1
            if server["clients"] == 0:
                server["session"].close()
                if server["tmp"] is not None:
                    server["tmp"].cleanup()
                server.clear()


class ClickHouseEventStore(WarehouseEventStore):
    """Events in ClickHouse tables, queried with the compiler's ClickHouse dialect.

    Args:
        client: the connection (``ConnectClient`` or ``ChdbClient``).
        attribution_window_ms: see ``EventStore``.
    """

    dialect = "clickhouse"

    def __init__(self, client: ClickHouseClient, attribution_window_ms: int | None = None) -> None:
        super().__init__(attribution_window_ms)
        self.client = client
        self._lock = threading.Lock()
        for statement in schema_statements():
            create = sqlglot.parse_one(statement, read="clickhouse")
            table = create.find(exp.Table)
            assert table is not None  # every schema statement creates a table
            table.set("db", exp.to_identifier(client.database))
            client.command(create.sql(dialect="clickhouse"))

    def _table(self, name: str) -> exp.Table:
        return exp.table_(name, db=self.client.database)

    @classmethod
    def from_url(cls, url: str, attribution_window_ms: int | None = None) -> ClickHouseEventStore:
        """``clickhouse://[user[:password]@]host[:port]/database`` or ``chdb:///path`` (``chdb://``: temporary).

        Without credentials in the URL, ``CLICKHOUSE_USER`` and ``CLICKHOUSE_PASSWORD`` are used when set.

        Raises:
            StoreError: a malformed URL; ``StoreUnreachable`` when the server does not answer.
        """
        parts = urlsplit(url)
        if parts.scheme == "chdb":
            path = parts.netloc + parts.path
            return cls(ChdbClient(path or None, "mtrank" if path else None), attribution_window_ms)
        database = parts.path.strip("/") or "default"
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise StoreError(f"store URL {url!r}: {exc}") from exc
        if not parts.hostname or "/" in database:
            raise StoreError(
                f"store URL {url!r}: expected clickhouse://[user[:password]@]host[:port]/database"
            )
        # Credentials from the URL, else from CLICKHOUSE_USER / CLICKHOUSE_PASSWORD (keeps them out of argv).
        user = unquote(parts.username) if parts.username else os.environ.get("CLICKHOUSE_USER", "default")
        password = unquote(parts.password) if parts.password else os.environ.get("CLICKHOUSE_PASSWORD", "")
        client = ConnectClient(parts.hostname, port, database, user, password)
        return cls(client, attribution_window_ms)

    def relations(self) -> sql.Relations:
        return sql.Relations(exposures=self._table("exposures"), outcomes_raw=self._table("outcomes"))

    def interleaving_relations(self) -> isql.InterleavingRelations:
        return isql.InterleavingRelations(self._table("interleaved"), self._table("item_outcomes"))

    def _query(self, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            return self.client.query(query)

    def apply(
        self,
        exposures: Exposures,
        outcomes: Outcomes,
        offsets: Mapping[TopicPartition, int],
        *,
        interleaved: Interleaved = (),
        item_outcomes: ItemOutcomes = (),
    ) -> None:
        self._refuse_offsets_behind(offsets, self.offsets())
        with self._lock:
            for kind, table in event_tables(exposures, outcomes, interleaved, item_outcomes):
                self.client.insert(self._table(kind).sql("clickhouse"), table)
            if offsets:
                now = time.time_ns()
                rows = list(zip(*[(tp[0], tp[1], o, now) for tp, o in offsets.items()], strict=True))
                names = ["topic", "partition", "last_offset", "written_ns"]
                types = [pa.string(), pa.int32(), pa.int64(), pa.int64()]
                self.client.insert(
                    self._table("offsets").sql("clickhouse"),
                    pa.table([pa.array(c, t) for c, t in zip(rows, types, strict=True)], names=names),
                )

    def offsets(self) -> dict[TopicPartition, int]:
        select = (
            exp.select(
                exp.column("topic"),
                exp.column("partition"),
                exp.alias_(
                    exp.ArgMax(this=exp.column("last_offset"), expression=exp.column("written_ns")), "o"
                ),
            )
            .from_(self._table("offsets"))
            .group_by(exp.column("topic"), exp.column("partition"))
        )
        _, rows = self._query(select.sql(dialect=sql.DIALECTS["clickhouse"]))
        return {TopicPartition(t, int(p)): int(o) for t, p, o in rows}

    def close(self) -> None:
        self.client.close()
