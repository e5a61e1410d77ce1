"""The analytics consumer against the real embedded broker: dedup, crash/restart, and a two-member group.

Every test compares the consumed store with a reference built by applying the produced events directly.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from analytics.consumer.checkpoint import Checkpoint
from analytics.consumer.exceptions import CheckpointOffsetBackwards
from analytics.consumer.processor import AnalyticsConsumer, decode_into
from analytics.events.messages import (
    encode_exposure,
    encode_outcome,
    frame_batch,
    make_exposure,
    make_outcome,
)
from analytics.events.producer import EventProducer
from analytics.kafka.broker import EmbeddedBroker
from analytics.store import (
    DuckDBEventStore,
    EventStore,
    ExposureColumns,
    ExposureRow,
    MemoryEventStore,
    OutcomeColumns,
    OutcomeRow,
    TopicPartition,
)
from proto import events_pb2
from tests.analytics.test_reader_validity import rejected

WINDOW_MS = 5_000
SESSION_MS = 2_000
ROOT = Path(__file__).resolve().parents[2]


def _dataset(seed: int, users: int, outcomes: int, t0: int = 1_000_000):
    rng = random.Random(seed)
    exposures = []
    for u in range(users):
        first = t0 + rng.randrange(10_000)
        variant = rng.choice(["control", "treatment"])
        exposures.append(make_exposure(f"u{u}", "exp1", variant, event_time_ms=first, request_id=f"r{u}"))
        if (
            rng.random() < 0.2
        ):  # a later exposure (e.g. another request) keeps the first variant's attribution
            exposures.append(make_exposure(f"u{u}", "exp1", "treatment", event_time_ms=first + 100))
    outs = [
        make_outcome(
            f"u{rng.randrange(users)}",
            rng.choice(["click", "watch_seconds"]),
            rng.choice([1.0, 2.0, 7.5]),
            event_time_ms=t0 - 2_000 + rng.randrange(20_000),
        )
        for _ in range(outcomes)
    ]
    return exposures, outs


def _reference(exposures: list[events_pb2.Exposure], outcomes: list[events_pb2.Outcome]) -> MemoryEventStore:
    store = MemoryEventStore(attribution_window_ms=WINDOW_MS)
    store.apply(
        [
            ExposureRow(e.event_id, e.experiment_key, e.variant_key, e.user_id, e.event_time_ms)
            for e in exposures
        ],
        [OutcomeRow(o.event_id, o.user_id, o.metric, o.event_time_ms, o.value) for o in outcomes],
        {},
    )
    return store


def _snapshot(store: EventStore) -> dict:
    return {
        "experiments": store.experiments(),
        "variants": store.variant_counts("exp1"),
        "click": list(store.user_metric_values("exp1", "click")),
        "watch": list(store.user_metric_values("exp1", "watch_seconds")),
        "timeline": store.exposure_timeline("exp1", 1_000),
        "range": store.time_range("exp1"),
    }


def _wait_for(store: EventStore, counts: dict[str, int], timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    while store.counts() != counts:
        assert time.monotonic() < deadline, f"store reached {store.counts()}, expected {counts}"
        time.sleep(0.1)


def _produce(
    bootstrap: str, topics: tuple[str, str], exposures, outcomes, tmp_path: Path, per_record: int = 50
):
    with EventProducer(
        bootstrap,
        exposures_topic=topics[0],
        outcomes_topic=topics[1],
        journal_path=tmp_path / f"producer-{time.monotonic_ns()}.journal",
        max_events_per_record=per_record,
    ) as producer:
        producer.send_exposures(exposures)
        producer.send_outcomes(outcomes)
        assert producer.flush(30)


def test_checkpoint_refuses_offsets_going_backwards() -> None:
    store = MemoryEventStore()
    checkpoint = Checkpoint(store, consumer=None)
    tp = TopicPartition("t", 0)
    checkpoint.start_partition(tp, last_applied=4)
    assert checkpoint.is_applied(tp, 4) and not checkpoint.is_applied(tp, 5)
    with pytest.raises(CheckpointOffsetBackwards, match=r"t\[0\]: offset 3 is not after 4"):
        checkpoint.set_offset(tp, 3)
    checkpoint.outcomes.append(OutcomeRow("o", "u", "click", 1, 1.0))
    checkpoint.set_offset(tp, 5)
    checkpoint.commit()
    assert store.offsets() == {tp: 5} and store.counts()["outcomes"] == 1 and checkpoint.empty


@pytest.mark.integration
def test_consume_dedups_and_matches_reference(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path
) -> None:
    exposures, outcomes = _dataset(seed=1, users=300, outcomes=1_000)
    _produce(kafka_broker.bootstrap, fresh_topics, exposures, outcomes, tmp_path)
    # redelivery of the same events (a producer retry after a lost ack) must not count twice
    _produce(kafka_broker.bootstrap, fresh_topics, exposures[:50], outcomes[:200], tmp_path)
    reference = _reference(exposures, outcomes)
    with DuckDBEventStore(tmp_path / "s.db", attribution_window_ms=WINDOW_MS) as store:
        consumer = AnalyticsConsumer(
            kafka_broker.bootstrap,
            store,
            group_id="dedup",
            topics=fresh_topics,
            session_timeout_ms=SESSION_MS,
            commit_interval_s=0.2,
        )
        thread = threading.Thread(target=consumer.run, kwargs={"max_seconds": 60})
        thread.start()
        try:
            _wait_for(store, reference.counts())
        finally:
            consumer.stop()
            thread.join()
        assert _snapshot(store) == _snapshot(reference)
        assert consumer.events_applied == len(exposures) + len(outcomes) + 250  # duplicates read, not counted

    # The group has committed offsets, but a new (empty) store is rebuilt from the beginning: the store decides.
    rebuilt = MemoryEventStore(attribution_window_ms=WINDOW_MS)
    consumer = AnalyticsConsumer(
        kafka_broker.bootstrap,
        rebuilt,
        group_id="dedup",
        topics=fresh_topics,
        session_timeout_ms=SESSION_MS,
        commit_interval_s=0.2,
    )
    thread = threading.Thread(target=consumer.run, kwargs={"max_seconds": 60})
    thread.start()
    try:
        _wait_for(rebuilt, reference.counts())
    finally:
        consumer.stop()
        thread.join()
    assert _snapshot(rebuilt) == _snapshot(reference)


def _start_consumer(
    bootstrap: str, topics: tuple[str, str], store: Path, group: str, extra: list[str] | None = None
) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "analytics.consumer", "--bootstrap", bootstrap, "--store", str(store),
        "--group", group, "--exposures-topic", topics[0], "--outcomes-topic", topics[1],
        "--session-timeout-ms", str(SESSION_MS), "--commit-interval-s", "0.05", "--commit-every-events", "300",
        "--log-level", "WARNING", *(extra or []),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.integration
@pytest.mark.slow
def test_consumer_killed_mid_stream_then_restarted_gives_identical_numbers(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path
) -> None:
    exposures, outcomes = _dataset(seed=2, users=1_000, outcomes=6_000)
    half_e, half_o = len(exposures) // 2, len(outcomes) // 2
    _produce(
        kafka_broker.bootstrap, fresh_topics, exposures[:half_e], outcomes[:half_o], tmp_path, per_record=10
    )
    path = tmp_path / "killed.db"
    proc = _start_consumer(kafka_broker.bootstrap, fresh_topics, path, "killed")
    try:
        deadline = time.monotonic() + 30
        with DuckDBEventStore(path) as partial:
            while partial.counts()["outcomes"] < 300:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the consumer made no progress"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert 0 < partial.counts()["outcomes"] < len(outcomes)
    finally:
        if proc.poll() is None:
            proc.kill()

    _produce(
        kafka_broker.bootstrap, fresh_topics, exposures[half_e:], outcomes[half_o:], tmp_path, per_record=10
    )
    proc = _start_consumer(kafka_broker.bootstrap, fresh_topics, path, "killed")
    reference = _reference(exposures, outcomes)
    metrics = tmp_path / "metrics.yaml"
    metrics.write_text("metrics: [{name: clicks, type: count, event: click}, {name: watch, type: mean, event: watch_seconds}]")
    try:
        # The report command reads the store from its own process while the consumer process writes to it.
        report = subprocess.run(
            [sys.executable, "-m", "analytics", "report", "exp1", "--store", str(path), "--metrics", str(metrics)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert report.returncode == 0 and "experiment exp1 (running)" in report.stdout, report.stderr[-2000:]
        with DuckDBEventStore(path, attribution_window_ms=WINDOW_MS) as store:
            _wait_for(store, reference.counts())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            assert _snapshot(store) == _snapshot(reference)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.integration
@pytest.mark.slow
def test_two_consumers_in_one_group_give_the_same_totals_as_one(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path
) -> None:
    path = tmp_path / "shared.db"
    stores = [DuckDBEventStore(path, attribution_window_ms=WINDOW_MS) for _ in range(2)]
    consumers = [
        AnalyticsConsumer(
            kafka_broker.bootstrap,
            s,
            group_id="pair",
            topics=fresh_topics,
            session_timeout_ms=SESSION_MS,
            commit_interval_s=0.2,
        )
        for s in stores
    ]
    threads = [threading.Thread(target=c.run, kwargs={"max_seconds": 60}) for c in consumers]
    exposures, outcomes = _dataset(seed=3, users=800, outcomes=3_000)
    half_e, half_o = len(exposures) // 2, len(outcomes) // 2
    reference = _reference(exposures, outcomes)
    try:
        threads[0].start()  # the first member owns every partition and is busy when the second one joins
        _produce(kafka_broker.bootstrap, fresh_topics, exposures[:half_e], outcomes[:half_o], tmp_path)
        deadline = time.monotonic() + 30
        while consumers[0].events_applied == 0:
            assert time.monotonic() < deadline, "the first member consumed nothing"
            time.sleep(0.05)
        threads[1].start()
        while not all(c.consumer.assignment() for c in consumers):  # the group split the partitions
            assert time.monotonic() < deadline, "the group never split the partitions"
            time.sleep(0.1)
        _produce(kafka_broker.bootstrap, fresh_topics, exposures[half_e:], outcomes[half_o:], tmp_path)
        _wait_for(stores[0], reference.counts())
    finally:
        for c in consumers:
            c.stop()
        for thread in threads:
            if thread.ident is not None:  # started
                thread.join()
    assert all(c.events_applied > 0 for c in consumers)
    # a revoked partition's pending events were persisted before the hand-over: nothing was applied twice
    assert sum(c.events_applied for c in consumers) == len(exposures) + len(outcomes)
    assert _snapshot(stores[0]) == _snapshot(reference)
    for s in stores:
        s.close()


def test_decoder_skips_unknown_schema_versions_and_garbage() -> None:
    good = make_outcome("u1", "click", event_time_ms=5)
    future = make_exposure("u1", "exp1", "a")
    future.schema_version = 99  # a producer newer than this consumer
    value = frame_batch([encode_outcome(good), encode_exposure(future)])
    exposures, outcomes = ExposureColumns(), OutcomeColumns()
    assert decode_into(value, exposures, outcomes) == 1
    assert list(exposures) == [] and list(outcomes) == [(good.event_id, "u1", "click", 5, 1.0)]
    assert outcomes.columns() == {
        "event_id": [good.event_id], "user_id": ["u1"], "metric": ["click"], "event_time_ms": [5], "value": [1.0]
    }  # fmt: skip
    assert decode_into(b"\xff\xff\xff", exposures, outcomes) == 1


@pytest.mark.integration
def test_a_null_record_value_is_skipped_not_a_crash_loop(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path
) -> None:
    """Kafka allows a record without a value (a tombstone). Decoding one raised, and since the store's offsets
    resume at that record, the restarted consumer crashed on it again, for good."""
    assert decode_into(None, ExposureColumns(), OutcomeColumns()) == 1
    outcomes = [make_outcome(f"u{i}", "click") for i in range(20)]
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        producer.send(fresh_topics[1], value=None, key=b"u", partition=0).get(timeout=10)
        value = frame_batch([encode_outcome(o) for o in outcomes])
        producer.send(fresh_topics[1], value=value, key=b"u", partition=0).get(timeout=10)
    finally:
        producer.close()
    store = MemoryEventStore()
    consumer = AnalyticsConsumer(
        kafka_broker.bootstrap, store, group_id="tombstone", topics=fresh_topics,
        session_timeout_ms=SESSION_MS, commit_interval_s=0.1,
    )  # fmt: skip
    consumer.run(max_seconds=30, idle_exit_s=2)
    assert store.counts()["outcomes"] == len(outcomes)


@pytest.mark.integration
def test_lag_counts_records_not_yet_durable(kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    exposures, outcomes = _dataset(seed=4, users=200, outcomes=400)
    _produce(kafka_broker.bootstrap, fresh_topics, exposures, outcomes, tmp_path, per_record=10)
    store = MemoryEventStore(attribution_window_ms=WINDOW_MS)
    consumer = AnalyticsConsumer(
        kafka_broker.bootstrap, store, group_id="lag", topics=fresh_topics, session_timeout_ms=SESSION_MS,
        commit_interval_s=3600, commit_every_events=10**9,
    )  # fmt: skip
    consumer.subscribe()
    try:
        deadline = time.monotonic() + 30
        while consumer.records_seen == 0 or not consumer.checkpoint.assigned:
            assert time.monotonic() < deadline, "no records within 30 s"
            consumer.poll_once()
        while len(consumer.update_lag()) < 8:  # every partition fetched once: its high watermark is known
            assert time.monotonic() < deadline, "some partitions were never fetched"
            consumer.poll_once()
        ends = {tp: consumer.consumer.highwater(tp) for tp in consumer.consumer.assignment()}
        records = sum(ends.values())
        assert 0 < records <= len(exposures) + len(outcomes)  # the producer frames several events per record
        assert consumer.update_lag() == ends  # read but not durable yet: everything still counts as lag
        consumer.commit()
        lag = consumer.update_lag()
        assert set(lag) == set(ends) and sum(lag.values()) == records - consumer.records_seen
        while consumer.records_seen < records:
            consumer.poll_once()
        consumer.commit()
        assert set(consumer.update_lag().values()) == {0}
        for tp in ends:
            assert REGISTRY.get_sample_value(
                "mtrank_analytics_consumer_lag_records", {"topic": tp.topic, "partition": str(tp.partition)}
            ) == 0
    finally:
        consumer.consumer.close()


@pytest.mark.integration
def test_consumer_command_serves_metrics(kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path) -> None:
    import urllib.request

    from analytics.kafka.broker import free_port

    exposures, outcomes = _dataset(seed=5, users=50, outcomes=100)
    _produce(kafka_broker.bootstrap, fresh_topics, exposures, outcomes, tmp_path)
    port = free_port()
    process = _start_consumer(kafka_broker.bootstrap, fresh_topics, tmp_path / "m.db", "metrics",
                              ["--metrics-port", str(port), "--lag-interval-s", "0.2"])
    try:
        deadline, text = time.monotonic() + 40, ""
        expected = [f'mtrank_analytics_consumer_lag_records{{partition="{p}",topic="{t}"}} 0.0'
                    for t in fresh_topics for p in range(4)]
        while not all(line in text for line in expected):
            assert process.poll() is None and time.monotonic() < deadline, text[-2000:]
            time.sleep(0.3)
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
        consumed = next(float(line.split()[1]) for line in text.splitlines()
                        if line.startswith("mtrank_analytics_events_consumed_total "))
        assert consumed == len(exposures) + len(outcomes)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


@pytest.mark.integration
def test_the_same_events_consumed_again_from_offset_zero_count_once(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path
) -> None:
    """A log that starts again at offset 0 with events already in the store (a broker that lost its data and got
    them again, or a consumer that rewound) changes no number: events are deduplicated by id when read."""
    exposures, outcomes = _dataset(seed=6, users=200, outcomes=600)
    reference = _reference(exposures, outcomes)
    again = (f"{fresh_topics[0]}.again", f"{fresh_topics[1]}.again")
    kafka_broker.create_topics(again, partitions=4)
    with DuckDBEventStore(tmp_path / "s", attribution_window_ms=WINDOW_MS, compact_parts=4) as store:
        for topics in (fresh_topics, again):
            _produce(kafka_broker.bootstrap, topics, exposures, outcomes, tmp_path, per_record=20)
            consumer = AnalyticsConsumer(
                kafka_broker.bootstrap, store, group_id=f"again-{topics[0]}", topics=topics,
                session_timeout_ms=SESSION_MS, commit_interval_s=0.1, commit_every_events=300,
            )  # fmt: skip
            consumer.run(max_seconds=60, idle_exit_s=3)
            assert consumer.events_applied == len(exposures) + len(outcomes)
            assert _snapshot(store) == _snapshot(reference) and store.counts() == reference.counts()
        assert {tp.topic for tp in store.offsets()} == set(fresh_topics) | set(again)


def test_a_record_that_parses_but_holds_no_events_isrejected() -> None:
    """Protobuf parses many messages as an EventBatch with unknown fields and no events (a single ``Event``
    serialised without its batch, as another producer might send): it was dropped without a count or a
    word."""
    single = events_pb2.Event(outcome=make_outcome("u1", "click")).SerializeToString()
    before = rejected("undecodable")
    for value in (single, b""):
        exposures, outcomes = ExposureColumns(), OutcomeColumns()
        assert decode_into(value, exposures, outcomes) == 1 and not len(exposures) and not len(outcomes)
    assert rejected("undecodable") - before == 2


@pytest.mark.integration
def test_each_record_kind_is_counted_and_named_where_it_is(
    kafka_broker: EmbeddedBroker, fresh_topics: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """One topic partition holding a batch with one invalid event among valid ones, a record that is not
    protobuf, an ``Event`` outside a batch and an empty record: the valid events are stored, every other one
    is counted, and each warning names the topic, partition and offset of its record."""
    from prometheus_client import REGISTRY

    good = [make_outcome(f"u{i}", "click", event_time_ms=5) for i in range(3)]
    invalid = make_outcome("u9", "click")
    invalid.user_id = ""
    values = [
        frame_batch([encode_outcome(o) for o in [good[0], invalid, good[1]]]),
        b"not protobuf at all",
        events_pb2.Event(outcome=make_outcome("u5", "click")).SerializeToString(),
        b"",
        frame_batch([encode_outcome(good[2])]),
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        for value in values:
            producer.send(fresh_topics[1], value=value, key=b"u", partition=2).get(timeout=10)
    finally:
        producer.close()
    def consumed() -> float:
        return REGISTRY.get_sample_value("mtrank_analytics_events_consumed_total") or 0.0

    consumed_before = consumed()
    invalid_before, undecodable_before = rejected("invalid"), rejected("undecodable")
    user_before = rejected("invalid", "Outcome.user_id")
    store = MemoryEventStore()
    consumer = AnalyticsConsumer(
        kafka_broker.bootstrap, store, group_id="kinds", topics=fresh_topics,
        session_timeout_ms=SESSION_MS, commit_interval_s=0.1,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="analytics.consumer"):
        consumer.run(max_seconds=30, idle_exit_s=2)
    assert store.counts()["outcomes"] == 3 and consumer.events_applied == 3
    assert consumed() - consumed_before == 3
    assert rejected("invalid") - invalid_before == 1 and rejected("undecodable") - undecodable_before == 3
    assert rejected("invalid", "Outcome.user_id") - user_before == 1
    where = f"{fresh_topics[1]}[2] offset"
    assert f"{where} 0: skipped 1 event" in caplog.text
    for offset in (1, 2, 3):
        assert f"{where} {offset}: skipping a record that is not an EventBatch" in caplog.text


@pytest.mark.integration
def test_an_error_in_close_does_not_hide_the_error_that_stopped_the_loop(
    kafka_broker: EmbeddedBroker, fresh_topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run`` closed the consumer in a ``finally``: when closing failed too (its revoke callback stores the
    checkpoint), that error replaced the one that stopped the loop, which was never seen."""
    consumer = AnalyticsConsumer(
        kafka_broker.bootstrap, MemoryEventStore(), group_id="close-fails", topics=fresh_topics,
        session_timeout_ms=SESSION_MS,
    )  # fmt: skip
    real_close = consumer.consumer.close

    def failing_poll() -> int:
        raise ValueError("the error that stopped the loop")

    def failing_close() -> None:
        real_close()
        raise RuntimeError("closing failed")

    monkeypatch.setattr(consumer, "poll_once", failing_poll)
    monkeypatch.setattr(consumer.consumer, "close", failing_close)
    with pytest.raises(ValueError, match="the error that stopped the loop"):
        consumer.run(max_seconds=30)
