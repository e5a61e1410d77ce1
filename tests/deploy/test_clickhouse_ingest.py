"""ClickHouse's own Kafka ingestion (deploy/clickhouse): its materialised views decode real EventBatch records
exactly as the Python consumer does, run on ClickHouse's engine in-process (chDB); and the compose and k8s
services that run it are wired to the same files, broker and credentials."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from analytics.consumer.processor import decode_into
from analytics.events.messages import (
    encode_exposure,
    encode_outcome,
    frame_batch,
    make_exposure,
    make_outcome,
)
from analytics.store import ExposureColumns, OutcomeColumns, open_store
from analytics.store.base import InterleavedColumns, ItemOutcomeColumns
from analytics.store.clickhouse_store import ClickHouseEventStore
from deploy import clickhouse_configmap
from proto import events_pb2
from tests.analytics.invalid_events import AT_THE_LIMITS, INVALID
from tests.deploy.test_deploy_files import COMPOSE_FILE, K8S_BASE, _load_all

ROOT = Path(__file__).resolve().parents[2]
INGEST = ROOT / "deploy" / "clickhouse" / "ingest.sql"


def _statements() -> list[str]:
    text = "\n".join(line for line in INGEST.read_text().splitlines() if not line.lstrip().startswith("--"))
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


def _both_readers(
    store: ClickHouseEventStore, records: list[bytes], folder: Path
) -> tuple[dict[str, list], dict[str, list]]:
    """The rows per table that the materialised views' SELECTs make of ``records`` (run on chDB over a file
    of each record), and those the Python consumer's decoder makes of them."""
    columns = {"exposures": ExposureColumns(), "outcomes": OutcomeColumns(),
               "interleaved": InterleavedColumns(), "item_outcomes": ItemOutcomeColumns()}  # fmt: skip
    found: dict[str, list[tuple]] = {table: [] for table in columns}
    for i, record in enumerate(records):
        decode_into(record, *columns.values())
        path = folder / f"record{i}.bin"
        path.write_bytes(record)
        source = f"file('{path}', 'ProtobufSingle', '{_kafka_structure()}')"
        for statement in _statements():
            match = re.match(
                r"CREATE MATERIALIZED VIEW IF NOT EXISTS \w+ TO (\w+) AS\s+(SELECT\b.*)", statement, re.S
            )
            if match:
                select = match.group(2).replace("FROM kafka_events", f"FROM {source}")
                select = select.replace("_error = '' AND ", "")  # a virtual column of the Kafka engine only
                _, rows = store.client.query(
                    f"{select} SETTINGS format_schema = 'proto/events.proto:EventBatch'"
                )
                found[match.group(1)] += rows
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


def test_the_materialised_views_skip_what_producers_would_not_send(
    chdb_store: ClickHouseEventStore, tmp_path: Path
) -> None:
    """The readers' rule (``received_event_problem``) in SQL: an outcome without a metric, a field over the
    contract's limits (in UTF-8 bytes), an event without the fields producers fill in, teams on a version 1
    exposure were all ingested by ClickHouse; events right at the limits are kept by both readers."""
    invalid = {name: build() for name, (build, _) in INVALID.items()}
    valid = {name: build() for name, build in AT_THE_LIMITS.items()}
    events = [*valid.values(), *invalid.values()]
    record = frame_batch(
        encode_outcome(e) if isinstance(e, events_pb2.Outcome) else encode_exposure(e) for e in events
    )
    found, decoded = _both_readers(chdb_store, [record], tmp_path)
    for table in found:
        assert sorted(found[table]) == sorted(decoded[table]), table
    ids = {row[0] for table in ("exposures", "outcomes") for row in found[table]}
    assert [name for name, event in invalid.items() if event.event_id and event.event_id in ids] == []
    assert ids == {event.event_id for event in valid.values()}


def test_the_kafka_table_reads_both_topics_as_event_batches() -> None:
    (create,) = [s for s in _statements() if "ENGINE = Kafka" in s]
    settings = dict(re.findall(r"(kafka_\w+) = '([^']*)'", create))
    assert settings["kafka_topic_list"].split(",") == ["mtrank.exposures", "mtrank.outcomes"]
    assert settings["kafka_format"] == "ProtobufSingle"
    assert settings["kafka_schema"] == "proto/events.proto:EventBatch"
    assert settings["kafka_handle_error_mode"] == "stream"
    views = [s for s in _statements() if s.startswith("CREATE MATERIALIZED VIEW")]
    assert {re.search(r" TO (\w+) AS", v).group(1) for v in views} == {
        "exposures", "outcomes", "interleaved", "item_outcomes"
    }


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
    assert targets[f"{sql_dir}/clickhouse_schema.sql"] == ROOT / "analytics/store/clickhouse_schema.sql"
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


@pytest.mark.parametrize("path", [INGEST, ROOT / "analytics/store/clickhouse_schema.sql"])
def test_sql_files_have_no_tabs_and_end_with_a_newline(path: Path) -> None:
    text = path.read_text()
    assert text.endswith("\n") and "\t" not in text  # the ConfigMap embeds them as YAML block scalars
