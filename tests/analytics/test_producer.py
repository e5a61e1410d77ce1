"""Event helpers, the journal, and the EventProducer against the real embedded broker (killed and restarted)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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
from analytics.events.outcome_server import main as outcome_server_main
from analytics.events.producer import EventProducer
from analytics.kafka.broker import EmbeddedBroker, free_port
from proto import events_pb2, limits, outcomes_pb2, outcomes_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
HUGE_ID = "u" * 1_100_000  # 1.1 MB: gRPC admits it, a Kafka record cannot hold it


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


def test_journal_reads_events_across_and_larger_than_its_read_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay cuts records out of fixed-size chunks: records split by a chunk end, and one larger than a
    chunk, come back whole and in order."""
    monkeypatch.setattr("analytics.events.journal._READ_CHUNK", 16)
    journal = Journal(tmp_path / "j.journal")
    events = [b"a" * 5, b"b" * 9, b"c" * 40, b"d", b"e" * 7]
    journal.append(events)
    replayed: list[bytes] = []
    while journal:
        items, pos = journal.read(2)
        assert 0 < len(items) <= 2
        replayed += items
        journal.advance(pos)
    assert replayed == events
    journal.close()


def test_journal_recovery_scans_headers_chunk_by_chunk_and_cuts_a_torn_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery used to read the whole journal (up to 1 GiB) into memory to find its end."""
    monkeypatch.setattr("analytics.events.journal._READ_CHUNK", 16)
    path = tmp_path / "j.journal"
    journal = Journal(path)
    events = [b"a" * 5, b"b" * 40, b"c" * 9, b"d"]
    journal.append(events)
    journal.close()
    with open(path, "ab") as f:  # a record cut short by a crash, its header across a chunk end
        f.write(b"\x00\x00\x00\x30" + b"e" * 7)
    journal = Journal(path)
    assert path.stat().st_size == sum(4 + len(e) for e in events)
    assert journal.read(10)[0] == events
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


class _Crash(BaseException):
    """Stands for the process dying at that point."""


def test_a_crash_while_the_journal_is_emptied_never_hides_the_next_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``advance`` empties the journal and removes its position file. Truncating first left a stale position
    after a crash between the two: the next producer's events were then read from that offset (all lost)."""
    path = tmp_path / "p.journal"
    journal = Journal(path)
    journal.append([b"a" * 10, b"b" * 10, b"c" * 10])
    journal.advance(journal.read(1)[1])  # a position file now exists
    end = journal.read(10)[1]

    def crash(self: Path, missing_ok: bool = False) -> None:
        raise _Crash

    with monkeypatch.context() as patch:
        patch.setattr(Path, "unlink", crash)
        with pytest.raises(_Crash):
            journal.advance(end)
    journal.close()
    journal = Journal(path)  # the restarted producer journals new events while the broker is away
    journal.append([b"new-1", b"new-2"])
    journal.close()
    journal = Journal(path)
    # delivered events may come again (deduplicated by event id), new ones are never skipped
    assert journal.read(10)[0] == [b"b" * 10, b"c" * 10, b"new-1", b"new-2"]
    journal.close()


def test_a_journal_that_cannot_be_opened_is_a_journal_error(tmp_path: Path, capsys) -> None:
    """It was a bare OSError, and the outcome server printed a traceback for it (and for a journal in use)."""
    (tmp_path / "file").write_text("")
    with pytest.raises(JournalError, match="cannot open journal"):
        EventProducer("127.0.0.1:1", journal_path=tmp_path / "file" / "p.journal")
    assert outcome_server_main(["--bootstrap", "127.0.0.1:1", "--journal", str(tmp_path / "file" / "j")]) == 2
    assert capsys.readouterr().err.startswith("error: --journal: cannot open journal")
    held = Journal(tmp_path / "held.journal")
    try:
        assert outcome_server_main(["--bootstrap", "127.0.0.1:1", "--journal", str(held.path)]) == 2
    finally:
        held.close()
    assert "is in use by another producer" in capsys.readouterr().err


_FULL_DISK_PRODUCER = """
import resource, signal, sys
from analytics.events.messages import make_outcome
from analytics.events.producer import EventProducer
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
producer = EventProducer(
    sys.argv[1], outcomes_topic=sys.argv[2], buffer_size=0, journal_path=sys.argv[3], delivery_timeout_s=2.0
)
for i in range(300):  # the caller never sees the full disk: events that do not fit are dropped and counted
    outcome = make_outcome(f"u{i}", "click")
    if producer.send_outcomes([outcome]):
        print(outcome.event_id)
producer.close(timeout=0.1)
print(producer.stats.dropped, file=sys.stderr)
"""


@pytest.mark.integration
def test_a_full_disk_drops_and_counts_events_and_keeps_the_journal_readable(
    kafka_broker: EmbeddedBroker, fresh_topics: tuple[str, str], tmp_path: Path, topic_reader
) -> None:
    """A journal write that failed used to raise to the caller and stay in the file object's buffer: every
    later send and the sender thread failed too, and the events already journalled were never delivered."""
    journal = tmp_path / "p.journal"
    down = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_PRODUCER, down, fresh_topics[1], str(journal)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    accepted = done.stdout.split()
    assert 0 < len(accepted) < 300 and int(done.stderr.split()[-1]) == 300 - len(accepted)
    with EventProducer(kafka_broker.bootstrap, outcomes_topic=fresh_topics[1], journal_path=journal) as again:
        assert again.flush(30)
    arrived = topic_reader(kafka_broker.bootstrap, fresh_topics[1], len(accepted), timeout_s=10)
    assert sorted(_ids(arrived)) == sorted(accepted)


@pytest.mark.integration
def test_a_delivery_timeout_of_one_second_delivers(
    kafka_broker: EmbeddedBroker, fresh_topics: tuple[str, str], topic_reader
) -> None:
    """kafka-python refuses a delivery timeout not above linger + request timeout: with 1 s every
    KafkaProducer failed to build and nothing was ever delivered."""
    outcome = make_outcome("u1", "click")
    with EventProducer(
        kafka_broker.bootstrap, outcomes_topic=fresh_topics[1], journal_path=None, delivery_timeout_s=1.0
    ) as producer:
        producer.send_outcomes([outcome])
        assert producer.flush(10) and producer.stats.producer_restarts == 0
    assert _ids(topic_reader(kafka_broker.bootstrap, fresh_topics[1], 1)) == [outcome.event_id]


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
        # no user id: an invalid event is dead-lettered (counted apart from the losses of a full buffer)
        assert producer.send_exposures([events_pb2.Exposure(experiment_key="e")]) == 0
        assert producer.stats.dropped == 5 and producer.stats.dead_lettered == 1
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
            huge = outcomes_pb2.ReportOutcomesRequest(
                outcomes=[events_pb2.Outcome(user_id=HUGE_ID, metric="c")]
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.ReportOutcomes(huge)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == "outcomes[0].user_id is longer than 512 bytes (UTF-8)"
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
    port, metrics_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "analytics.events.outcome_server", "--bootstrap", kafka_broker.bootstrap,
        "--address", f"127.0.0.1:{port}", "--topic", outcomes_topic, "--journal", str(tmp_path / "j"),
        "--log-level", "WARNING", "--metrics-port", str(metrics_port),
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
        # the producer's counters are served (the dashboard's producer panel had no outcome-server series)
        sent = f'mtrank_events_sent_total{{topic="{outcomes_topic}"}} 5.0'
        deadline = time.monotonic() + 30
        while sent not in (text := _metrics_text(metrics_port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sent in text, text[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(topic_reader(kafka_broker.bootstrap, outcomes_topic, 5)) == 5


def _metrics_text(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_outcome_server_metrics_port_in_use_is_one_line(tmp_path: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--bootstrap", "127.0.0.1:1", "--journal", str(tmp_path / "j"), "--metrics-port", str(port)]
        assert outcome_server_main(argv) == 2
    assert f"error: --metrics-port: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "j").exists()  # checked before the journal is opened


def _dead_letters(journal: Path) -> list[events_pb2.Event]:
    dead = Journal(journal.with_name(journal.name + ".dead"))
    try:
        return [events_pb2.Event.FromString(ev) for ev in dead.read(1000)[0]]
    finally:
        dead.close()


def _dead_lettered_metric(topic: str, reason: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("mtrank_events_dead_lettered_total", {"topic": topic, "reason": reason})
    return value or 0.0


def test_event_builders_bound_every_string_field() -> None:
    with pytest.raises(InvalidEvent, match=r"Outcome.user_id is longer than 512 bytes") as info:
        make_outcome(HUGE_ID, "click")
    assert len(str(info.value)) < 100  # the value is never echoed
    with pytest.raises(InvalidEvent, match="Outcome.metric"):
        OutcomeClient(producer=EventProducer(f"127.0.0.1:{free_port()}", journal_path=None)).report(
            "u1", "m" * (limits.MAX_NAME_BYTES + 1)
        )
    with pytest.raises(InvalidEvent, match="Exposure.request_id"):
        make_exposure("u1", "exp", "control", request_id="é" * (limits.MAX_ID_BYTES // 2 + 1))  # 2 bytes each
    make_exposure("u1", "exp", "control", request_id="é" * (limits.MAX_ID_BYTES // 2))  # exactly the limit


@pytest.mark.integration
def test_an_oversized_event_is_dead_lettered_and_never_blocks_the_queue(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path, topic_reader
) -> None:
    exposures_topic, _ = fresh_topics
    journal = tmp_path / "p.journal"
    before = _dead_lettered_metric(exposures_topic, "invalid")
    producer = EventProducer(
        kafka_broker.bootstrap, exposures_topic=exposures_topic, journal_path=journal, delivery_timeout_s=3
    )
    try:
        poisoned = events_pb2.Exposure(user_id=HUGE_ID, experiment_key="e", variant_key="v")  # built by hand
        assert producer.send_exposures([poisoned]) == 0
        good = [make_exposure(f"u{i}", "e", "v") for i in range(200)]
        assert producer.send_exposures(good) == 200
        assert producer.flush(30), "the events behind the poisoned one are delivered"
    finally:
        producer.close()
    assert producer.stats.dead_lettered == 1 and producer.stats.dropped == 0
    assert _dead_lettered_metric(exposures_topic, "invalid") - before == 1
    assert [e.exposure.user_id for e in _dead_letters(journal)] == [HUGE_ID]
    arrived = topic_reader(kafka_broker.bootstrap, exposures_topic, 200)
    assert sorted(_ids(arrived)) == sorted(e.event_id for e in good)


@pytest.mark.integration
def test_an_oversized_event_in_the_journal_is_dead_lettered_at_replay(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path, topic_reader
) -> None:
    """A journal written before the limits existed: the restart must not replay the poisoned event forever."""
    _, outcomes_topic = fresh_topics
    journal = tmp_path / "p.journal"
    old = Journal(journal)
    good = [make_outcome(f"u{i}", "click") for i in range(50)]
    huge = events_pb2.Outcome(event_id="huge", user_id=HUGE_ID, metric="click", value=1.0)
    old.append(
        [encode_outcome(o) for o in good[:25]]
        + [encode_outcome(huge)]
        + [encode_outcome(o) for o in good[25:]]
    )
    old.close()
    before = _dead_lettered_metric(outcomes_topic, "too_large")
    with EventProducer(
        kafka_broker.bootstrap, outcomes_topic=outcomes_topic, journal_path=journal, delivery_timeout_s=3
    ) as producer:
        assert producer.flush(30) and producer.journal_bytes == 0
    assert producer.stats.dead_lettered == 1
    assert _dead_lettered_metric(outcomes_topic, "too_large") - before == 1
    assert [e.outcome.event_id for e in _dead_letters(journal)] == ["huge"]
    arrived = topic_reader(kafka_broker.bootstrap, outcomes_topic, 50)
    assert sorted(_ids(arrived)) == sorted(o.event_id for o in good)


@pytest.mark.integration
def test_records_refused_as_too_large_are_split_and_a_lone_big_event_is_dead_lettered(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path, topic_reader
) -> None:
    """Kafka's size limit below ``max_record_bytes`` (here the client's request cap, 64 KiB): records shrink."""
    exposures_topic, _ = fresh_topics
    journal = tmp_path / "p.journal"
    producer = EventProducer(
        kafka_broker.bootstrap,
        exposures_topic=exposures_topic,
        journal_path=journal,
        delivery_timeout_s=3,
        retry_backoff_s=0.05,
        kafka_config={"max_request_size": 64 * 1024},
    )
    try:
        small = [make_exposure("same-user", "e", "v", item_ids=range(100)) for _ in range(2000)]  # ~700 KB
        big = make_exposure("u-big", "e", "v", item_ids=range(1 << 40, (1 << 40) + 12_000))  # ~80 KB alone
        producer.send_exposures([*small[:1000], big, *small[1000:]])
        assert producer.flush(60)
    finally:
        producer.close()
    assert producer.stats.dead_lettered == 1
    assert [e.exposure.event_id for e in _dead_letters(journal)] == [big.event_id]
    arrived = topic_reader(kafka_broker.bootstrap, exposures_topic, 2000)
    assert sorted(set(_ids(arrived))) == sorted(e.event_id for e in small)


def test_report_outcomes_answers_garbage_bytes_with_invalid_argument(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = EventProducer(f"127.0.0.1:{free_port()}", journal_path=None, delivery_timeout_s=0.5)
    server, port = build_server(producer, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                "/mtrank.v1.OutcomeReporter/ReportOutcomes",
                request_serializer=None,
                response_deserializer=None,
            )
            with caplog.at_level(logging.DEBUG):
                for payload in (b"\xff\xff\xff\x0f", b"\x0a\x05ab"):
                    with pytest.raises(grpc.RpcError) as info:
                        call(payload, timeout=5)
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert info.value.details() == "request: cannot be parsed as the method's request message"
        assert "Traceback" not in caplog.text
    finally:
        server.stop(0)
        producer.close(timeout=0.5)
