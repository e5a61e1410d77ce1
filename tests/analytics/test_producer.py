"""Event helpers, the journal, and the EventProducer against the real embedded broker (killed and restarted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from analytics.events.client import OutcomeClient
from analytics.events.errors import InvalidEvent, JournalError
from analytics.events.journal import Journal
from analytics.events.messages import (
    SCHEMA_VERSION,
    decode_batch,
    encode_exposure,
    encode_outcome,
    frame_batch,
    make_exposure,
    make_outcome,
)
from analytics.events.outcome_server import build_server
from analytics.events.producer import EventProducer
from analytics.kafka.broker import EmbeddedBroker, free_port
from proto import events_pb2, outcomes_pb2, outcomes_pb2_grpc


def test_make_events_fill_ids_schema_and_time() -> None:
    a = make_exposure("u1", "exp", "treatment", item_ids=[3, 1, 2], model_name="mmoe", model_version="2")
    b = make_exposure("u1", "exp", "treatment")
    assert len(a.event_id) == 32 and a.event_id != b.event_id
    assert a.schema_version == SCHEMA_VERSION and a.event_time_ms > 1_600_000_000_000
    assert list(a.item_ids) == [3, 1, 2] and a.model.version == "2"
    o = make_outcome("u1", "watch_seconds", 12.5, event_time_ms=7)
    assert (o.metric, o.value, o.event_time_ms) == ("watch_seconds", 12.5, 7)
    with pytest.raises(InvalidEvent, match="Outcome.metric"):
        make_outcome("u1", "")
    with pytest.raises(InvalidEvent, match="Exposure.user_id"):
        make_exposure("", "exp", "control")


def test_frame_batch_is_a_valid_event_batch() -> None:
    events = [make_exposure(f"u{i}", "exp", "control") for i in range(3)] + [make_outcome("u0", "click")]
    encoded = [encode_exposure(e) for e in events[:3]] + [encode_outcome(events[3])]
    batch = decode_batch(frame_batch(encoded))
    expected = events_pb2.EventBatch(
        events=[events_pb2.Event(exposure=e) for e in events[:3]] + [events_pb2.Event(outcome=events[3])]
    )
    assert batch == expected


def test_journal_replays_in_order_survives_reopen_and_cuts_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    journal = Journal(path)
    journal.append([b"a", b"bb"])
    journal.append([b"ccc"])
    with pytest.raises(JournalError, match="in use by another producer"):
        Journal(path)
    items, pos = journal.read(2)
    assert items == [b"a", b"bb"]
    journal.advance(pos)
    journal.close()
    with open(path, "ab") as f:  # a record cut short by a crash
        f.write(b"\x00\x00\x00\x09abc")
    journal = Journal(path)
    assert journal.read(10)[0] == [b"ccc"]
    _, pos = journal.read(10)
    journal.advance(pos)
    assert not journal and path.stat().st_size == 0
    journal.close()


def test_journal_slots_give_each_live_producer_its_own_file(tmp_path: Path) -> None:
    first = Journal.first_free_slot(tmp_path, "ranker")
    second = Journal.first_free_slot(tmp_path, "ranker")
    assert (first.path.name, second.path.name) == ("ranker.0.journal", "ranker.1.journal")
    first.append([b"left by a crashed worker"])
    first.close()
    again = Journal.first_free_slot(
        tmp_path, "ranker"
    )  # a restarted worker takes the free slot and replays it
    assert again.path.name == "ranker.0.journal" and again.read(5)[0] == [b"left by a crashed worker"]
    again.close()
    second.close()


def test_journal_size_cap(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", max_bytes=20)
    assert journal.append([b"x" * 10])
    assert not journal.append([b"y" * 10])
    journal.close()


def _ids(events: list[events_pb2.Event]) -> list[str]:
    return [getattr(e, e.WhichOneof("payload")).event_id for e in events]


@pytest.mark.integration
def test_broker_killed_mid_stream_exact_count_arrives(tmp_path: Path, topic_reader) -> None:
    topic = "kill.outcomes"
    broker = EmbeddedBroker(topics=(topic,), partitions=3, data_dir=tmp_path).start()
    producer = EventProducer(
        broker.bootstrap,
        outcomes_topic=topic,
        buffer_size=200,
        journal_path=tmp_path / "p.journal",
        delivery_timeout_s=2.0,
        retry_backoff_s=0.1,
        max_events_per_record=50,
    )
    try:
        first = [make_outcome(f"u{i % 37}", "click", event_time_ms=i) for i in range(500)]
        producer.send_outcomes(first)
        assert producer.flush(30)
        # The in-memory broker forgets everything when killed: read what it acknowledged first.
        assert sorted(_ids(topic_reader(broker.bootstrap, topic, 500))) == sorted(o.event_id for o in first)

        broker.kill()
        second = [make_outcome(f"u{i % 41}", "watch_seconds", i / 10, event_time_ms=i) for i in range(1500)]
        for i in range(0, 1500, 100):  # the caller keeps going: nothing blocks, nothing raises
            assert producer.send_outcomes(second[i : i + 100]) == 100
        assert producer.stats.journalled >= 1000  # buffer full -> journal
        assert not producer.flush(2.5)  # down longer than a delivery attempt: the KafkaProducer is replaced

        broker.restart()  # same port, empty broker (topics recreated, nothing else)
        assert producer.flush(60)
        arrived = topic_reader(broker.bootstrap, topic, 1500)
        assert sorted(set(_ids(arrived))) == sorted(o.event_id for o in second)
        first_seen = dict.fromkeys(e.outcome.event_time_ms for e in arrived if e.outcome.user_id == "u5")
        # per key, replayed in the order sent (redeliveries aside)
        assert list(first_seen) == sorted(first_seen)
        assert producer.stats.sent >= 2000 and producer.stats.dropped == 0
        assert producer.stats.producer_restarts >= 1
        assert producer.journal_bytes == 0
    finally:
        producer.close(timeout=2)
        broker.stop()


@pytest.mark.integration
def test_close_while_broker_down_keeps_events_in_journal_for_next_producer(
    tmp_path: Path, topic_reader
) -> None:
    port = free_port()
    journal = tmp_path / "p.journal"
    outcomes = [make_outcome(f"u{i}", "click") for i in range(300)]
    producer = EventProducer(
        f"127.0.0.1:{port}", buffer_size=50, journal_path=journal, delivery_timeout_s=1.0, retry_backoff_s=0.1
    )
    producer.send_outcomes(outcomes)
    producer.close(timeout=1)  # no broker at all: everything ends up in the journal
    assert producer.stats.dropped == 0 and journal.stat().st_size > 0

    with EmbeddedBroker(port=port, partitions=2, data_dir=tmp_path) as broker:
        with EventProducer(broker.bootstrap, journal_path=journal) as replay:
            assert replay.flush(30)
        arrived = topic_reader(broker.bootstrap, "mtrank.outcomes", 300)
        assert set(_ids(arrived)) == {o.event_id for o in outcomes}


def test_no_journal_overflow_is_dropped_and_counted() -> None:
    producer = EventProducer(
        f"127.0.0.1:{free_port()}", buffer_size=10, journal_path=None, delivery_timeout_s=0.5
    )
    try:
        assert producer.send_outcomes([make_outcome("u", "click") for _ in range(10)]) == 10
        assert producer.send_outcomes([make_outcome("u", "click") for _ in range(5)]) == 0
        assert producer.stats.dropped == 5
        assert producer.send_exposures([events_pb2.Exposure(experiment_key="e")]) == 0  # no user id: dropped
        assert producer.stats.dropped == 6
    finally:
        producer.close(timeout=0.5)


@pytest.mark.integration
def test_outcome_client_and_grpc_reporter(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path, topic_reader
) -> None:
    _, outcomes_topic = fresh_topics
    producer = EventProducer(
        kafka_broker.bootstrap, outcomes_topic=outcomes_topic, journal_path=tmp_path / "j"
    )
    client = OutcomeClient(producer=producer)
    ids = [client.report("u1", "click", request_id="r1", item_id=9)]
    ids += client.report_many([{"user_id": "u2", "metric": "watch_seconds", "value": 3.5}])

    server, port = build_server(producer, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = outcomes_pb2_grpc.OutcomeReporterStub(channel)
            request = outcomes_pb2.ReportOutcomesRequest(
                outcomes=[events_pb2.Outcome(user_id="u3", metric="click", value=1.0)]
            )
            assert stub.ReportOutcomes(request).accepted == 1
            bad = outcomes_pb2.ReportOutcomesRequest(
                outcomes=[
                    events_pb2.Outcome(user_id="u3", metric="click"),
                    events_pb2.Outcome(metric="click"),
                ]
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.ReportOutcomes(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "outcomes[1].user_id" in err.value.details()
        assert client.flush(30)
    finally:
        server.stop(0)
        producer.close()
    events = topic_reader(kafka_broker.bootstrap, outcomes_topic, 3)
    by_user = {e.outcome.user_id: e.outcome for e in events}
    assert set(by_user) == {"u1", "u2", "u3"}
    assert by_user["u1"].event_id == ids[0] and by_user["u1"].item_id == 9 and by_user["u2"].value == 3.5
    assert by_user["u3"].event_id and by_user["u3"].schema_version == SCHEMA_VERSION


@pytest.mark.integration
def test_outcome_server_entry_point_serves_health_and_drains_on_sigterm(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path, topic_reader
) -> None:
    _, outcomes_topic = fresh_topics
    port = free_port()
    cmd = [
        sys.executable, "-m", "analytics.events.outcome_server", "--bootstrap", kafka_broker.bootstrap,
        "--address", f"127.0.0.1:{port}", "--topic", outcomes_topic, "--journal", str(tmp_path / "j"),
        "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="mtrank.v1.OutcomeReporter")
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            request = outcomes_pb2.ReportOutcomesRequest(
                outcomes=[events_pb2.Outcome(user_id=f"u{i}", metric="click", value=1.0) for i in range(5)]
            )
            assert outcomes_pb2_grpc.OutcomeReporterStub(channel).ReportOutcomes(request).accepted == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(topic_reader(kafka_broker.bootstrap, outcomes_topic, 5)) == 5
