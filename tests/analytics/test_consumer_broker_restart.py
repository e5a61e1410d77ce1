"""The analytics consumer across a broker that loses its data: killed and restarted empty on the same port.

The new broker's log starts at offset 0, below the offsets the store already holds. Every produced event must
still end up in the store exactly once, whether the consumer kept running or was restarted as well.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from analytics.consumer.checkpoint import Checkpoint, resume_points, stored_key
from analytics.consumer.processor import AnalyticsConsumer
from analytics.events.messages import make_outcome
from analytics.events.producer import EventProducer
from analytics.kafka.broker import EmbeddedBroker
from analytics.store import EventStore, MemoryEventStore, TopicPartition, open_store

pytestmark = pytest.mark.integration

TOPICS = ("restart.exposures", "restart.outcomes")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(topics=TOPICS, partitions=2, data_dir=tmp_path) as running:
        yield running


def _produce(broker: EmbeddedBroker, tmp_path: Path, first: int, count: int) -> set[str]:
    """``count`` outcomes, one Kafka record per 5 events so that offsets grow quickly; returns their ids."""
    outcomes = [
        make_outcome(f"u{i % 97}", "click", event_time_ms=1_000 + i) for i in range(first, first + count)
    ]
    with EventProducer(
        broker.bootstrap,
        exposures_topic=TOPICS[0],
        outcomes_topic=TOPICS[1],
        journal_path=tmp_path / f"p{first}.journal",
        max_events_per_record=5,
        delivery_timeout_s=3,
    ) as producer:
        for i in range(0, count, 100):  # several sends: several records per partition
            producer.send_outcomes(outcomes[i : i + 100])
            producer.flush(30)
        assert producer.flush(30)
    return {o.event_id for o in outcomes}


def _stored(store: EventStore) -> int:
    return store.counts()["outcomes"]


def _wait_for(store: EventStore, expected: int, timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _stored(store) < expected:
        assert time.monotonic() < deadline, f"{_stored(store)} of {expected} events stored"
        time.sleep(0.05)


def _consumer(broker: EmbeddedBroker, store: EventStore) -> AnalyticsConsumer:
    return AnalyticsConsumer(
        broker.bootstrap,
        store,
        group_id="restart",
        topics=TOPICS,
        session_timeout_ms=2_000,
        commit_interval_s=0.1,
        lag_interval_s=0.2,
    )


def _resets() -> float:
    return sum(
        REGISTRY.get_sample_value(
            "mtrank_analytics_log_resets_total", {"topic": TOPICS[1], "partition": str(p)}
        )
        or 0.0
        for p in range(2)
    )


def _run(consumer: AnalyticsConsumer) -> threading.Thread:
    thread = threading.Thread(target=consumer.run, kwargs={"max_seconds": 120}, daemon=True)
    thread.start()
    return thread


def test_running_consumer_reads_the_new_log_after_the_broker_lost_its_data(
    broker: EmbeddedBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryEventStore()
    consumer = _consumer(broker, store)
    thread = _run(consumer)
    resets = _resets()
    try:
        _produce(broker, tmp_path, 0, 3_000)
        _wait_for(store, 3_000)
        before = resume_points(store.offsets())
        broker.kill()  # mid-stream: the consumer keeps polling a dead broker, then an empty one
        broker.start()
        with caplog.at_level(logging.WARNING, logger="analytics.consumer"):
            _produce(broker, tmp_path, 3_000, 1_000)  # fewer records than the old log held: ends below them
            _wait_for(store, 4_000)
            time.sleep(0.5)  # nothing arrives twice either
        assert _stored(store) == 4_000, "every produced event stored exactly once"
        assert _resets() - resets == 2, "each partition's rewrite detected once"
        assert "broker lost its data or the topic was recreated" in caplog.text
        after = resume_points(store.offsets())
        for tp, (_, old_offset) in before.items():  # (the empty broker may auto-create more partitions)
            generation, offset = after[tp]
            assert generation == 1 and offset < old_offset, "the new log generation's offsets are stored"
    finally:
        consumer.stop()
        thread.join(30)


def _unreachable() -> float:
    return REGISTRY.get_sample_value("mtrank_analytics_broker_unreachable_total") or 0.0


def test_running_consumer_retries_when_a_poll_finds_no_broker(
    broker: EmbeddedBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python's poll raises ``KafkaConnectionError`` when it looks the group coordinator up while no broker
    answers (the soak test saw the consumer exit on it once, after a broker kill; when that happens is a race
    inside the client, so here the next three polls raise it as it did): the consumer keeps running, warns
    once, and consumes from the real broker again."""
    store = MemoryEventStore()
    consumer = _consumer(broker, store)
    real_poll, failures = consumer.poll_once, [3]

    def poll_once(timeout_ms: int = 200) -> int:
        if failures[0] and _stored(store) >= 500:
            failures[0] -= 1
            raise KafkaConnectionError("111 ECONNREFUSED")
        return real_poll(timeout_ms)

    monkeypatch.setattr(consumer, "poll_once", poll_once)
    failed = _unreachable()
    thread = _run(consumer)
    try:
        with caplog.at_level(logging.INFO, logger="analytics.consumer"):
            _produce(broker, tmp_path, 0, 500)
            _wait_for(store, 500)
            _produce(broker, tmp_path, 500, 500)
            _wait_for(store, 1_000)
            # The poll that stored the last events logs the recovery once it returns, on the consumer's thread:
            # wait for it here, while INFO is still captured.
            deadline = time.monotonic() + 10
            while "Kafka answers again" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        assert not failures[0] and _unreachable() - failed == 3
        assert thread.is_alive()
        assert caplog.text.count("Kafka does not answer") == 1, "one warning per outage"
        assert "Kafka answers again" in caplog.text
    finally:
        consumer.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_restarted_consumer_reads_the_new_log_after_the_broker_lost_its_data(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The consumer was stopped while the broker came back empty: its stored offsets lie past the new log end."""
    store = MemoryEventStore()
    first = _consumer(broker, store)
    thread = _run(first)
    _produce(broker, tmp_path, 0, 3_000)
    try:
        _wait_for(store, 3_000)
    finally:
        first.stop()
        thread.join(30)
    broker.kill()
    broker.start()
    _produce(broker, tmp_path, 3_000, 1_000)
    second = _consumer(broker, store)
    thread = _run(second)
    try:
        _wait_for(store, 4_000)
        # once reset, a further restart resumes within the new generation: nothing is read again
        second.stop()
        thread.join(30)
        third = _consumer(broker, store)
        resets = _resets()
        thread = _run(third)
        _produce(broker, tmp_path, 4_000, 200)
        _wait_for(store, 4_200)
        assert _resets() == resets and _stored(store) == 4_200
        third.stop()
    finally:
        second.stop()
        thread.join(30)


def test_resume_points_take_the_newest_log_generation() -> None:
    tp = TopicPartition("mtrank.outcomes", 3)
    stored = {tp: 1_849, stored_key(tp, 1): 40, stored_key(tp, 2): 7, TopicPartition("other", 0): 5}
    assert stored_key(tp, 2) == TopicPartition("mtrank.outcomes#2", 3)
    assert resume_points(stored) == {tp: (2, 7), TopicPartition("other", 0): (0, 5)}


class _RewrittenLog:
    """The two calls the checkpoint makes of its consumer, for a partition whose new log ends at ``end``."""

    def __init__(self, end: int) -> None:
        self.end = end
        self.rewound: list[TopicPartition] = []

    def highwater(self, tp: TopicPartition) -> int:
        return self.end

    def seek_to_beginning(self, partitions: list[TopicPartition]) -> None:
        self.rewound.extend(partitions)


@pytest.mark.parametrize("store_kind", ["memory", "duckdb"])
def test_a_reset_is_durable_before_the_new_logs_first_event(store_kind: str, tmp_path: Path) -> None:
    # A rebalance between the reset and the first stored event of the new log must resume in the new generation,
    # not compare the old generation's offsets with the new log and reset it a second time.
    store = MemoryEventStore() if store_kind == "memory" else open_store(str(tmp_path / "events"))
    tp = TopicPartition(TOPICS[1], 0)
    log_ = _RewrittenLog(end=10)
    checkpoint = Checkpoint(store, log_)  # type: ignore[arg-type]
    checkpoint.start_partition(tp, last_applied=1_849)
    assert checkpoint.rewritten_partitions() == {tp: 10}
    checkpoint.reset_partition(tp, 10)
    checkpoint.persist()
    assert log_.rewound == [tp]
    assert resume_points(store.offsets())[tp] == (1, -1), "the new generation is stored, nothing of it applied"

    generation, last = resume_points(store.offsets())[tp]
    reassigned = Checkpoint(store, log_)  # type: ignore[arg-type]
    reassigned.start_partition(tp, last, generation)
    assert reassigned.rewritten_partitions() == {}
    assert reassigned.next_offset(tp) == 0 and not reassigned.is_applied(tp, 0)
    store.close()
