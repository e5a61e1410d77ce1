"""ClickHouse's own Kafka ingestion (deploy/clickhouse): its materialised views decode real EventBatch records
exactly as the Python consumer does, run on ClickHouse's engine in-process (chDB); applying ingest.sql over an
install of any earlier version of it gives what a fresh install has, and an install upgraded while it ingests
a real broker loses and repeats no event; and the compose and k8s services that run it are wired to the same
files, broker and credentials, and apply it on every start."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from kafka import KafkaProducer

from analytics.consumer.processor import EVENTS_REJECTED, decode_into
from analytics.events.messages import (
    encode_exposure,
    encode_outcome,
    frame_batch,
    make_exposure,
    make_outcome,
)
from analytics.kafka.broker import DEFAULT_TOPICS, EmbeddedBroker
from analytics.store import ExposureColumns, OutcomeColumns, open_store
from analytics.store.base import InterleavedColumns, ItemOutcomeColumns
from analytics.store.clickhouse_store import ChdbClient, ClickHouseEventStore
from deploy import clickhouse_configmap
from proto import events_pb2, limits
from tests.analytics.invalid_events import AT_THE_LIMITS, INVALID, Event
from tests.deploy.test_deploy_files import COMPOSE_FILE, K8S_BASE, _load_all

ROOT = Path(__file__).resolve().parents[2]
INGEST = ROOT / "deploy" / "clickhouse" / "ingest.sql"
SCHEMA = ROOT / "analytics" / "store" / "clickhouse_schema.sql"
EVENT_TABLES = ("exposures", "outcomes", "interleaved", "item_outcomes")
BEFORE_THE_READERS_RULE = "5cf352b"  # ingest.sql whose views kept events that producers refuse
NO_BROKER = "127.0.0.1:9"  # the Kafka table of a test that feeds kafka_records itself: nothing listens there


def _statements(text: str | None = None) -> list[str]:
    """The statements of ``text`` (default: the current ingest.sql), without comments."""
    text = INGEST.read_text() if text is None else text
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def _kafka_structure() -> str:
    (create,) = [s for s in _statements() if s.startswith("CREATE TABLE") and "ENGINE = Kafka" in s]
    return create[create.index("(") + 1 : create.index("ENGINE = Kafka")].strip().removesuffix(")").strip()


ARMS = (("control", "mmoe", "1"), ("treatment", "mmoe+dml", "2"))
CLICK_9 = make_outcome("u3", "click", request_id="r3", item_id=9, event_time_ms=14)
CLICK_0 = make_outcome("u3", "click", request_id="r3", item_id=0, event_time_ms=15)  # item 0: an item
NO_ITEM = make_outcome("u3", "click", request_id="r3", event_time_ms=16)  # names the request, no item


def _records() -> list[bytes]:
    future = make_exposure("u9", "exp", "a", event_time_ms=9)
    future.schema_version = 99  # a newer producer: skipped by both
    anonymous = make_outcome("u8", "click", 1.0, event_time_ms=8)
    anonymous.user_id = ""  # no user: skipped by both
    interleaved = make_exposure("u3", "il", "interleaved", request_id="r3", item_ids=[5, 0, 9], teams=[1, 0, 1],
                                arms=ARMS, event_time_ms=12)
    repeated = make_exposure("u3", "il", "interleaved", request_id="r4", item_ids=[5, 6], teams=[1, 0], arms=ARMS)
    repeated.item_ids[1] = 5  # an item twice: skipped by both
    bad_team = make_exposure("u3", "il", "interleaved", request_id="r5", item_ids=[5], teams=[1], arms=ARMS)
    bad_team.teams[0] = 3
    infinite = make_outcome("u3", "watch", 1.0, request_id="r3", event_time_ms=13)
    infinite.value = float("inf")  # skipped by both
    return [
        frame_batch([encode_exposure(make_exposure("u1", "exp", "a", event_time_ms=5)),
                     encode_outcome(make_outcome("u1", "click", 2.5, event_time_ms=7)),
                     encode_exposure(future)]),
        frame_batch([encode_outcome(make_outcome("u2", "watch", 12.25, event_time_ms=11)),
                     encode_outcome(anonymous),
                     encode_exposure(make_exposure("u2", "exp", "b", event_time_ms=10))]),
        frame_batch([encode_exposure(interleaved), encode_exposure(repeated), encode_exposure(bad_team),
                     encode_outcome(CLICK_9), encode_outcome(CLICK_0), encode_outcome(NO_ITEM),
                     encode_outcome(infinite)]),
    ]  # fmt: skip


@pytest.fixture()
def chdb_store() -> Iterator[ClickHouseEventStore]:
    """An in-process ClickHouse (chDB) store that decodes ``EventBatch`` with the project's protos."""
    store = open_store("chdb://")
    assert isinstance(store, ClickHouseEventStore)
    try:
        schemas = store.client.data_path / "format_schemas" / "proto"
        schemas.mkdir(parents=True, exist_ok=True)
        for name in ("events.proto", "common.proto"):
            shutil.copy(ROOT / "proto" / name, schemas / name)
        yield store
    finally:
        store.close()


def _rejected_by_python() -> collections.Counter[tuple[str, str]]:
    """The Python consumer's ``mtrank_analytics_events_rejected_total`` so far, per (reason, field)."""
    (metric,) = EVENTS_REJECTED.collect()
    return collections.Counter(
        {
            (s.labels["reason"], s.labels["field"]): int(s.value)
            for s in metric.samples
            if s.name.endswith("_total")
        }
    )


def _rejected_by_clickhouse(store: ClickHouseEventStore) -> collections.Counter[tuple[str, str]]:
    """What rejected_events holds, per (reason, field): the query deploy/README.md gives operators."""
    _, rows = store.client.query(
        f"SELECT reason, field, sum(events) FROM {store.client.database}.rejected_events GROUP BY reason, field"
    )
    return collections.Counter({(reason, field): n for reason, field, n in rows})


def _feed(store: ClickHouseEventStore, records: list[bytes], folder: Path) -> None:
    """Pass ``records`` to kafka_records through kafka_records_mv's own SELECT, reading in place of the
    Kafka table what it gives in 'stream' mode: a record decoded by ClickHouse's ProtobufSingle format (from
    a file of it) and no _error, or (one it cannot decode) no events and an _error. Through the views they
    reach the event tables and rejected_events."""
    for i, record in enumerate(records):
        path = folder / f"record{i}.bin"
        path.write_bytes(record)
        try:
            _insert_records(store, f"SELECT events, '' AS _error FROM file('{path}', 'ProtobufSingle', "
                                   f"'{_kafka_structure()}')")  # fmt: skip
        except RuntimeError as exc:
            assert "Protobuf" in str(exc) or "protobuf" in str(exc), exc
            _insert_records(store, "SELECT [] AS events, 'undecodable' AS _error")


def _insert_records(store: ClickHouseEventStore, kafka_table: str) -> None:
    """Run kafka_records_mv's SELECT (as ingest.sql writes it) over ``kafka_table`` (a query standing in for
    the Kafka table), into kafka_records."""
    (view,) = [s for s in _statements() if s.startswith("CREATE MATERIALIZED VIEW kafka_records_mv ")]
    select = view[view.index(" AS\n") + len(" AS\n") :]
    assert select.endswith("\nFROM kafka_events"), select
    store.client.command(
        f"INSERT INTO {store.client.database}.kafka_records (events) {select.removesuffix('kafka_events')}"
        f"({kafka_table}) SETTINGS format_schema = 'proto/events.proto:EventBatch'"
    )


def _both_readers(
    store: ClickHouseEventStore, records: list[bytes], folder: Path
) -> tuple[dict[str, list], dict[str, list]]:
    """The rows per table that the materialised views write of ``records`` (ingest.sql applied on chDB, the
    records fed to kafka_records), and those the Python consumer's decoder makes of them."""
    columns = {"exposures": ExposureColumns(), "outcomes": OutcomeColumns(),
               "interleaved": InterleavedColumns(), "item_outcomes": ItemOutcomeColumns()}  # fmt: skip
    for record in records:
        decode_into(record, *columns.values())
    _apply(store, INGEST.read_text(), NO_BROKER)
    _feed(store, records, folder)
    database = store.client.database
    found = {table: store.client.query(f"SELECT * FROM {database}.{table}")[1] for table in columns}
    return found, {table: list(rows) for table, rows in columns.items()}


def test_the_materialised_views_decode_event_batches_like_the_python_consumer(
    chdb_store: ClickHouseEventStore, tmp_path: Path
) -> None:
    found, decoded = _both_readers(chdb_store, _records(), tmp_path)
    for table, expected in {"exposures": 3, "outcomes": 5, "interleaved": 1, "item_outcomes": 2}.items():
        assert sorted(found[table]) == sorted(decoded[table]) and len(found[table]) == expected, table
    # The click without an item is an outcome but no item outcome (it was one of item 0, credited to the
    # arm that showed item 0); the click on item 0 is one of item 0.
    assert sorted(found["item_outcomes"]) == sorted(
        (o.event_id, "u3", "r3", o.item_id, "click", o.event_time_ms) for o in (CLICK_9, CLICK_0)
    )


def _encode(event: Event) -> bytes:
    return encode_outcome(event) if isinstance(event, events_pb2.Outcome) else encode_exposure(event)


def test_the_materialised_views_skip_what_producers_would_not_send(
    chdb_store: ClickHouseEventStore, tmp_path: Path
) -> None:
    """The readers' rule (``received_event_problem``) in SQL: an outcome without a metric, a field over the
    contract's limits (in UTF-8 bytes), an event without the fields producers fill in, teams on a version 1
    exposure were all ingested by ClickHouse; events right at the limits are kept by both readers."""
    invalid = {name: build() for name, (build, _) in INVALID.items()}
    valid = {name: build() for name, build in AT_THE_LIMITS.items()}
    events = [*valid.values(), *invalid.values()]
    record = frame_batch(_encode(e) for e in events)
    found, decoded = _both_readers(chdb_store, [record], tmp_path)
    for table in found:
        assert sorted(found[table]) == sorted(decoded[table]), table
    ids = {row[0] for table in ("exposures", "outcomes") for row in found[table]}
    assert [name for name, event in invalid.items() if event.event_id and event.event_id in ids] == []
    assert ids == {event.event_id for event in valid.values()}


UNDECODABLE = (b"\xff\xff\xff", b"\x10\x01")  # no protobuf; a protobuf of no events (an unknown field)


def test_the_views_count_what_they_refuse_as_the_python_consumer_does(
    chdb_store: ClickHouseEventStore, tmp_path: Path
) -> None:
    """Refused events and undecodable records were skipped without a count: rejected_events holds the Python
    consumer's counts (``mtrank_analytics_events_rejected_total``) of the same records, per field at fault
    (the readers' rule, written once in ingest.sql), and nothing of the valid events."""
    invalid = [build() for build, _ in INVALID.values()]
    valid = [build() for build in AT_THE_LIMITS.values()]
    events = [*valid[:3], *invalid, *valid[3:]]
    record = frame_batch(_encode(e) for e in events)
    before = _rejected_by_python()
    _both_readers(chdb_store, [record, *UNDECODABLE], tmp_path)
    by_python = _rejected_by_python() - before
    by_clickhouse = _rejected_by_clickhouse(chdb_store)
    assert by_clickhouse == by_python
    fields = collections.Counter(field for _, field in INVALID.values())
    assert by_clickhouse == {("invalid", field): n for field, n in fields.items()} | {
        ("undecodable", ""): len(UNDECODABLE)
    }
    kinds = collections.Counter(field.split(".")[0] for _, field in by_clickhouse.elements())
    exposures = sum(isinstance(e, events_pb2.Exposure) for e in invalid)
    assert kinds == {"Exposure": exposures, "Outcome": len(invalid) - exposures, "": len(UNDECODABLE)}


def test_reapplying_ingest_keeps_the_rejected_counts(
    chdb_store: ClickHouseEventStore, tmp_path: Path
) -> None:
    """rejected_events is data, like the event tables: each start applies ingest.sql again, which recreates its
    view and leaves its rows."""
    _apply(chdb_store, INGEST.read_text(), NO_BROKER)
    _feed(chdb_store, [UNDECODABLE[0]], tmp_path)
    _apply(chdb_store, INGEST.read_text(), NO_BROKER)
    _feed(chdb_store, [UNDECODABLE[0]], tmp_path)
    assert _rejected_by_clickhouse(chdb_store) == {("undecodable", ""): 2}


def _string_fields(descriptor: Descriptor, prefix: str = "") -> list[str]:
    """Every string field of a message and of its submessages, named as readers name them (``model.name``;
    ``arms[0].key``: the first of the repeated arms): read from the proto, so a field added there is
    checked."""
    fields = []
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            fields.append(prefix + field.name)
        elif field.message_type is not None:
            index = "[0]" if field.is_repeated else ""
            fields += _string_fields(field.message_type, f"{prefix}{field.name}{index}.")
    return fields


def _with_string(kind: type[Event], field: str, value: str) -> Event:
    """A valid event of ``kind`` (an exposure: an interleaving one, which has arms) with the string ``field``
    (as ``_string_fields`` names it) set to ``value``."""
    if kind is events_pb2.Exposure:
        event: Event = make_exposure("u1", "il", "interleaved", request_id="r1", item_ids=[3, 4],
                                     teams=[0, 1], arms=ARMS, event_time_ms=5)  # fmt: skip
    else:
        event = make_outcome("u1", "click", 1.0, request_id="r1", item_id=4, event_time_ms=7)
    *path, name = field.split(".")
    holder: Any = event
    for part in path:
        attribute, _, index = part.partition("[")
        holder = getattr(holder, attribute)
        holder = holder[int(index.removesuffix("]"))] if index else holder
    setattr(holder, name, value)
    return event


STRING_FIELDS = [(kind, field) for kind in (events_pb2.Exposure, events_pb2.Outcome)
                 for field in _string_fields(kind.DESCRIPTOR)]  # fmt: skip
NOT_UTF8 = (b"\xff", b"\xc3Z", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xf0\x9f\x98")
"""No UTF-8: a byte no text has, a lead byte without its continuation, an overlong "/", a surrogate, a code
point past U+10FFFF, a lone continuation byte, a truncated emoji."""


def test_both_readers_hold_every_string_field_to_its_limit_under_its_name(
    chdb_store: ClickHouseEventStore, tmp_path: Path
) -> None:
    """Every string field (from the proto) of each kind one byte over its limit (in two-byte characters:
    bytes, not characters, count) is refused by both readers under its name; at its limit, kept by both. The
    views check the fields both kinds have once (kafka_records.heads): this holds them to the Python rule for
    each kind, fields that INVALID leaves out (an exposure's request id, say) included."""
    over, at = [], []
    for kind, field in STRING_FIELDS:
        is_id = field in ("user_id", "request_id", "event_id")
        limit = limits.MAX_ID_BYTES if is_id else limits.MAX_NAME_BYTES
        over.append(_with_string(kind, field, "é" * (limit // 2) + "a"))
        at.append(_with_string(kind, field, "é" * (limit // 2)))
    before = _rejected_by_python()
    found, decoded = _both_readers(chdb_store, [frame_batch(_encode(e) for e in [*at, *over])], tmp_path)
    for table in found:
        assert sorted(found[table]) == sorted(decoded[table]), table
    assert {row[0] for table in ("exposures", "outcomes") for row in found[table]} == {e.event_id for e in at}
    by_python = _rejected_by_python() - before
    assert _rejected_by_clickhouse(chdb_store) == by_python
    assert by_python == {("invalid", f"{kind.__name__}.{field}"): 1 for kind, field in STRING_FIELDS}


def _not_utf8(kind: type[Event], field: str, bad: bytes) -> bytes:
    """A record of a valid event of ``kind`` and one whose string ``field`` holds the bytes ``bad``."""
    placeholder = "~" * len(bad)  # as long as the bytes it stands for: every length prefix stays right
    event = _encode(_with_string(kind, field, placeholder))
    assert event.count(placeholder.encode()) == 1, field
    valid = _encode(_with_string(kind, "user_id", "u2"))
    return frame_batch([valid, event.replace(placeholder.encode(), bad)])


def test_the_views_refuse_a_record_holding_a_string_that_is_not_utf8_as_the_python_consumer_does(
    chdb_store: ClickHouseEventStore, tmp_path: Path
) -> None:
    """Protobuf parsers refuse a string field (proto3) that is not UTF-8, the Python consumer's too: the
    whole record is undecodable to it. ClickHouse's ProtobufSingle read the bytes, and the views stored the
    events (16 records through a real broker, each with one string field that is not UTF-8: all their events
    stored, none counted). Every string field (from the proto) of each kind, in a record beside a valid
    event: both readers keep neither event, and count the record as undecodable; the valid records around
    them are read."""
    bad_records = [
        _not_utf8(kind, field, NOT_UTF8[i % len(NOT_UTF8)]) for i, (kind, field) in enumerate(STRING_FIELDS)
    ]
    before = _rejected_by_python()
    records = _records()
    found, decoded = _both_readers(chdb_store, [records[0], *bad_records, *records[1:]], tmp_path)
    for table in found:
        assert sorted(found[table]) == sorted(decoded[table]), table
    assert len(found["exposures"]) == 3 and len(found["outcomes"]) == 5
    by_python = _rejected_by_python() - before
    assert _rejected_by_clickhouse(chdb_store) == by_python
    assert by_python["undecodable", ""] == len(bad_records) == len(STRING_FIELDS) > 15


def test_the_kafka_table_reads_both_topics_as_event_batches() -> None:
    (create,) = [s for s in _statements() if "ENGINE = Kafka" in s]
    settings = dict(re.findall(r"(kafka_\w+) = '([^']*)'", create))
    assert settings["kafka_topic_list"].split(",") == ["mtrank.exposures", "mtrank.outcomes"]
    assert settings["kafka_format"] == "ProtobufSingle"
    assert settings["kafka_schema"] == "proto/events.proto:EventBatch"
    assert settings["kafka_handle_error_mode"] == "stream"
    views = [s for s in _statements() if s.startswith("CREATE MATERIALIZED VIEW")]
    targets = {re.search(r" TO (\w+) AS", v).group(1) for v in views}
    assert targets == {*EVENT_TABLES, "kafka_records", "rejected_events"}


def test_applying_ingest_stops_consumption_first_and_starts_it_last() -> None:
    """A Kafka table consumes while a view reads it: dropping it first stops every view at once, and its one
    view, created last, starts consumption with the views of all four event tables in place."""
    statements = _statements()
    assert statements[0] == "DROP TABLE IF EXISTS kafka_events"
    readers = [s for s in statements if re.search(r"\bFROM kafka_events\b", s)]
    assert readers == [statements[-1]]
    assert statements[-1].startswith("CREATE MATERIALIZED VIEW kafka_records_mv TO kafka_records")
    created = [re.match(r"CREATE (?:TABLE|MATERIALIZED VIEW) (IF NOT EXISTS )?(\w+)", s) for s in statements]
    dropped = {m.group(1) for s in statements if (m := re.match(r"DROP (?:TABLE|VIEW) IF EXISTS (\w+)$", s))}
    # each object it creates, whatever version made it, but the counts it keeps (data, like the event tables)
    assert dropped == {m.group(2) for m in created if m and not m.group(1)}
    assert [m.group(2) for m in created if m and m.group(1)] == ["rejected_events"]


def _apply(store: ClickHouseEventStore, text: str, bootstrap: str = "kafka:9092") -> None:
    """Apply an ingest.sql in the store's database as init.sh does (the broker replaced, statements in order,
    stopping at the first error). chDB, not the server, answers LOGICAL_ERROR "Shutdown was called" to the
    creation of a Kafka table that it does create (and that consumes): that answer alone is let through."""
    client = store.client
    client.command(f"USE {client.database}")
    try:
        for statement in _statements(text.replace("'kafka:9092'", f"'{bootstrap}'")):
            try:
                client.command(statement)
            except RuntimeError as exc:
                kafka = re.match(
                    r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)\s*\(.*ENGINE = Kafka\b", statement, re.S
                )
                if not (kafka and "Shutdown was called" in str(exc) and _exists(store, kafka.group(1))):
                    raise
    finally:
        client.command("USE default")


def _exists(store: ClickHouseEventStore, name: str) -> bool:
    """Whether the store's database holds a table or view ``name``."""
    _, rows = store.client.query(
        f"SELECT count() FROM system.tables WHERE database = '{store.client.database}' AND name = '{name}'"
    )
    return bool(rows[0][0])


def _tables(store: ClickHouseEventStore) -> dict[str, str]:
    """The tables and views of the store's database: name -> CREATE statement."""
    database = store.client.database
    _, rows = store.client.query(
        f"SELECT name, create_table_query FROM system.tables WHERE database = '{database}'"
    )
    return {name: create.replace(f"{database}.", "") for name, create in rows}


def _kafka_objects(store: ClickHouseEventStore) -> dict[str, str]:
    """The Kafka table, views, Null table and counts of the store's database: name -> CREATE statement."""
    return {
        name: create
        for name, create in _tables(store).items()
        if name.startswith("kafka") or name == "rejected_events"
    }


def _differing(found: dict[str, str], expected: dict[str, str]) -> list[str]:
    """The names whose CREATE statements differ, or that one of the two lacks."""
    return sorted(name for name in {*found, *expected} if found.get(name) != expected.get(name))


def _git_log(path: Path) -> list[str]:
    """The commits that changed ``path``, newest first."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "log", "--format=%h", "--abbrev=7", "--", str(path.relative_to(ROOT))],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip


def _git_show(revision: str, path: Path = INGEST) -> str:
    """``path`` (ingest.sql) as of ``revision``: what an install made then holds."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:{path.relative_to(ROOT)}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


@pytest.fixture()
def fresh_install(chdb_store: ClickHouseEventStore) -> dict[str, str]:
    """What applying the current ingest.sql to an empty database creates (in a database of its own)."""
    fresh = open_store("chdb://")
    assert isinstance(fresh, ClickHouseEventStore)
    try:
        _apply(fresh, INGEST.read_text())
        return _kafka_objects(fresh)
    finally:
        fresh.close()


def test_applying_ingest_over_each_earlier_install_gives_what_a_fresh_install_has(
    fresh_install: dict[str, str],
) -> None:
    """CREATE ... IF NOT EXISTS kept an install's views and Kafka columns: over the install of 5cf352b the
    current file failed on its first view (the old Kafka table has no exposure stage) and left the old ones
    ingesting; over 4090007's, 5cf352b's file kept the Int64 item id and its item outcome view silently."""
    log = _git_log(INGEST)
    assert BEFORE_THE_READERS_RULE in log
    differing = {}
    for revision in log:
        store = open_store("chdb://")
        assert isinstance(store, ClickHouseEventStore)
        try:
            _apply(store, _git_show(revision))
            _apply(store, INGEST.read_text())
            upgraded = _kafka_objects(store)
        finally:
            store.close()
        differing[revision] = _differing(upgraded, fresh_install)
    assert differing == {revision: [] for revision in log}


def _schema_install(schema: str) -> ClickHouseEventStore:
    """A database whose tables ``schema`` (a clickhouse_schema.sql) created, then started as init.sh starts
    one: the current clickhouse_schema.sql applied over them (the store applies it once more: IF NOT
    EXISTS)."""
    client = ChdbClient()
    try:
        client.command(f"USE {client.database}")
        try:
            for text in (schema, SCHEMA.read_text()):
                for statement in _statements(text):
                    client.command(statement)
        finally:
            client.command("USE default")
        return ClickHouseEventStore(client)
    except BaseException:
        client.close()
        raise


def test_a_start_gives_an_install_of_each_earlier_schema_the_tables_a_fresh_one_has(
    chdb_store: ClickHouseEventStore, tmp_path: Path
) -> None:
    """init.sh creates the event tables IF NOT EXISTS: an install keeps the columns its first start gave them,
    and no start migrates them. None needs to: no table's columns changed in the schema's history (c5ff4b9,
    4155bec, 5cf352b); 4155bec added two tables, which a start creates. A change to a table's columns (or its
    engine or order) without a migration fails here. The install of the oldest schema, started on the current
    files, ingests as the Python consumer reads (``chdb_store`` holds the protos)."""
    log = _git_log(SCHEMA)
    assert "CREATE TABLE IF NOT EXISTS interleaved" not in _git_show(log[-1], SCHEMA)
    fresh = _schema_install("")
    try:
        expected = _tables(fresh)
    finally:
        fresh.close()
    differing = {}
    for revision in log:
        store = _schema_install(_git_show(revision, SCHEMA))
        try:
            differing[revision] = _differing(_tables(store), expected)
            if revision == log[-1]:
                found, decoded = _both_readers(store, _records(), tmp_path)
        finally:
            store.close()
    assert differing == {revision: [] for revision in log}
    assert set(expected) == {*EVENT_TABLES, "offsets"}
    for table in EVENT_TABLES:
        assert sorted(found[table]) == sorted(decoded[table]) and found[table], table


def test_applying_ingest_twice_gives_what_applying_it_once_does(
    chdb_store: ClickHouseEventStore, fresh_install: dict[str, str]
) -> None:
    _apply(chdb_store, INGEST.read_text())
    _apply(chdb_store, INGEST.read_text())
    assert _kafka_objects(chdb_store) == fresh_install
    assert set(fresh_install) == {"kafka_events", "kafka_records", "kafka_records_mv", "rejected_events"} | {
        f"kafka_{table}_mv" for table in (*EVENT_TABLES, "rejected")
    }


def _event_ids(store: ClickHouseEventStore) -> dict[str, list[str]]:
    """The event ids in each event table, a repeated one as often as it is there."""
    database = store.client.database
    return {
        table: sorted(row[0] for row in store.client.query(f"SELECT event_id FROM {database}.{table}")[1])
        for table in EVENT_TABLES
    }


def _wait_for(store: ClickHouseEventStore, expected: dict[str, list[str]], timeout_s: float) -> None:
    """Until every expected event id is in its table (the Kafka engine joins the group and polls)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = _event_ids(store)
        missing = {table: sorted(set(ids) - set(found[table])) for table, ids in expected.items()}
        if not any(missing.values()):
            return
        assert time.monotonic() < deadline, f"not ingested after {timeout_s:.0f} s: {missing}"
        time.sleep(0.5)


def _send(
    producer: KafkaProducer, exposures: list[events_pb2.Exposure], outcomes: list[events_pb2.Outcome]
) -> None:
    """One record per topic, as producers batch them; written straight to Kafka, so refused events go too."""
    exposure_topic, outcome_topic = DEFAULT_TOPICS
    producer.send(exposure_topic, frame_batch(encode_exposure(e) for e in exposures))
    producer.send(outcome_topic, frame_batch(encode_outcome(o) for o in outcomes))
    producer.flush()


def _traffic() -> tuple[list[events_pb2.Exposure], list[events_pb2.Outcome]]:
    """An A/B exposure, an interleaved one, a click on an item, and last an outcome producers refuse (a 257-byte
    metric), which the views of 5cf352b kept and the current ones skip."""
    interleaved = make_exposure(
        "u1", "il", "interleaved", request_id="r1", item_ids=[5, 6], teams=[0, 1], arms=ARMS, event_time_ms=6
    )
    click = make_outcome("u1", "click", request_id="r1", item_id=5, event_time_ms=7)
    refused = INVALID["outcome metric of 257 bytes"][0]()
    return [make_exposure("u1", "exp", "a", event_time_ms=5), interleaved], [click, refused]


def _rows(exposures: list[events_pb2.Exposure], outcomes: list[events_pb2.Outcome]) -> dict[str, list[str]]:
    """The event ids each event table gets from these events (each outcome names a request and an item)."""
    return {
        "exposures": [e.event_id for e in exposures],
        "interleaved": [e.event_id for e in exposures if e.schema_version == 2],
        "outcomes": [o.event_id for o in outcomes],
        "item_outcomes": [o.event_id for o in outcomes],
    }


QUICK_GROUP = "mtrank_test_quick_group"
"""A named collection of librdkafka settings for the test broker: the group's session times out after 6 s (the
least a Kafka broker allows by default), not librdkafka's 45 s. The embedded broker answers a JoinGroup after
about half the session timeout, and a Kafka table dropped by ingest.sql leaves the group only when its session
times out (chDB sends no LeaveGroup): with the defaults the two installs took 30 s and 88 s to be assigned."""


def _on_the_test_broker(text: str) -> str:
    """``text`` (an ingest.sql) with its Kafka table reading ``QUICK_GROUP``'s librdkafka settings and writing
    each block after 500 ms (kafka_flush_interval_ms; the default, stream_flush_interval_ms, is 7.5 s); its
    columns, topics, group, format and error mode unchanged."""
    engine = "ENGINE = Kafka\nSETTINGS\n"
    assert text.count(engine) == 1, "the Kafka table's ENGINE clause changed: update _on_the_test_broker"
    return text.replace(
        engine, f"ENGINE = Kafka({QUICK_GROUP})\nSETTINGS\n    kafka_flush_interval_ms = 500,\n"
    )


@pytest.fixture()
def quick_group(chdb_store: ClickHouseEventStore) -> Iterator[None]:
    """``QUICK_GROUP``, created in the embedded server for one test."""
    client = chdb_store.client
    client.command(f"CREATE NAMED COLLECTION {QUICK_GROUP} AS "
                   "`kafka.session_timeout_ms` = '6000', `kafka.heartbeat_interval_ms` = '1000'")  # fmt: skip
    try:
        yield
    finally:
        client.command(f"DROP NAMED COLLECTION IF EXISTS {QUICK_GROUP}")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("quick_group")
def test_an_install_upgraded_while_it_ingests_kafka_loses_and_repeats_no_event(
    chdb_store: ClickHouseEventStore, tmp_path: Path
) -> None:
    """The install of 5cf352b ingests a real broker; the current file is applied over it; what the producers
    write after is read by the new views from the group's committed offsets: every event once, through all four
    views (Kafka table -> kafka_records_mv -> Null table -> views), the refused outcome only before, and counted
    with the undecodable records after (a record with a metric that is not UTF-8 among them: its outcomes were
    stored)."""
    with EmbeddedBroker(partitions=1, data_dir=tmp_path) as broker:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        try:
            _apply(chdb_store, _on_the_test_broker(_git_show(BEFORE_THE_READERS_RULE)), broker.bootstrap)
            exposures, outcomes = _traffic()
            _send(producer, exposures, outcomes)
            before = _rows(exposures, outcomes)  # the refused outcome too
            _wait_for(chdb_store, before, timeout_s=240)

            _apply(chdb_store, _on_the_test_broker(INGEST.read_text()), broker.bootstrap)
            not_utf8 = _not_utf8(events_pb2.Outcome, "metric", NOT_UTF8[0])
            for record in (*UNDECODABLE, not_utf8):  # ahead of the traffic, in its partition
                producer.send(DEFAULT_TOPICS[1], record)
            exposures, outcomes = _traffic()
            _send(producer, exposures, outcomes)
            after = _rows(exposures, outcomes[:-1])
            _wait_for(chdb_store, after, timeout_s=240)
            expected = {table: sorted(before[table] + after[table]) for table in EVENT_TABLES}
            assert _event_ids(chdb_store) == expected  # each event once: none lost, none read twice
            # the refused outcome and the undecodable records (Kafka's 'stream' mode; not UTF-8), counted once
            rejected = {("invalid", "Outcome.metric"): 1, ("undecodable", ""): len(UNDECODABLE) + 1}
            deadline = time.monotonic() + 60  # the views of one block write one after the other
            while _rejected_by_clickhouse(chdb_store) != rejected and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _rejected_by_clickhouse(chdb_store) == rejected
        finally:
            producer.close()
            chdb_store.client.command(f"DROP TABLE IF EXISTS {chdb_store.client.database}.kafka_events")


def test_compose_clickhouse_is_wired_to_kafka_the_schema_and_the_protos() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    clickhouse = services["clickhouse"]
    env = clickhouse["environment"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]
    assert env["KAFKA_BOOTSTRAP"] == advertised
    assert "'kafka:9092'" in INGEST.read_text()  # the placeholder init.sh replaces with $KAFKA_BOOTSTRAP
    mounts = dict(m.rsplit(":", 2)[:2] for m in clickhouse["volumes"] if m.startswith("."))
    sql_dir = env["MTRANK_SQL_DIR"]
    targets = {target: (COMPOSE_FILE.parent / source).resolve() for source, target in mounts.items()}
    assert targets[f"{sql_dir}/clickhouse_schema.sql"] == SCHEMA
    assert targets[f"{sql_dir}/ingest.sql"] == INGEST
    assert targets["/var/lib/clickhouse/format_schemas/proto"] == ROOT / "proto"
    assert targets["/docker-entrypoint-initdb.d/init.sh"] == ROOT / "deploy/clickhouse/init.sh"
    dashboard = services["analytics-clickhouse"]["command"]
    store = next(a.split("=", 1)[1] for a in dashboard if a.startswith("--store="))
    assert store == f"clickhouse://{env['CLICKHOUSE_USER']}:{env['CLICKHOUSE_PASSWORD']}@clickhouse:8123/{env['CLICKHOUSE_DB']}"


def test_k8s_clickhouse_config_map_carries_the_same_files() -> None:
    (config_map,) = _load_all(K8S_BASE / "configmap-clickhouse.yaml")
    assert config_map["data"] == {key: path.read_text() for key, path in clickhouse_configmap.SOURCES.items()}, (
        "stale copy: run python -m deploy.clickhouse_configmap"
    )
    assert clickhouse_configmap.TARGET.read_text() == clickhouse_configmap.render()
    docs = _load_all(K8S_BASE / "clickhouse.yaml")
    (server,) = [d for d in docs if d["kind"] == "StatefulSet"]
    container = server["spec"]["template"]["spec"]["containers"][0]
    assert {"configMapRef": {"name": "mtrank-runtime"}} in container["envFrom"]  # KAFKA_BOOTSTRAP
    (warehouse,) = [d for d in docs if d["kind"] == "Deployment"]
    args = warehouse["spec"]["template"]["spec"]["containers"][0]["args"]
    database = next(e["value"] for e in container["env"] if e["name"] == "CLICKHOUSE_DB")
    assert f"--store=clickhouse://{server['metadata']['name']}:8123/{database}" in args


def test_compose_and_k8s_apply_ingest_on_every_start() -> None:
    """The image's entrypoint runs init.sh only on a first start unless CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS is
    set: then an upgrade that changes ingest.sql reaches an existing install with the restart that brings it."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["clickhouse"]["environment"]
    (server,) = [d for d in _load_all(K8S_BASE / "clickhouse.yaml") if d["kind"] == "StatefulSet"]
    env = {e["name"]: e.get("value") for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert compose["CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS"] and env["CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS"]


@pytest.mark.parametrize("path", [INGEST, SCHEMA])
def test_sql_files_have_no_tabs_and_end_with_a_newline(path: Path) -> None:
    text = path.read_text()
    assert text.endswith("\n") and "\t" not in text  # the ConfigMap embeds them as YAML block scalars
