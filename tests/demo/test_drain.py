"""The demo's drain step against the real embedded broker and the real analytics consumer: it waits until
the consumer has stored every record, returns as soon as it has, and when the cap comes first says what was
left."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer, TopicPartition

from analytics.consumer.processor import AnalyticsConsumer
from analytics.events.messages import encode_outcome, frame_batch, make_outcome
from analytics.kafka.broker import EmbeddedBroker
from analytics.store import DuckDBEventStore
from deploy.demo.drain import Drain, drain_consumer, end_offsets, wait_until_consumed

pytestmark = pytest.mark.integration
PARTITIONS = 4
NO_CAP_S = 600.0
"""A cap these tests never reach: their pytest timeouts, far below it, fail a wait that runs to the cap."""


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(topics=(), partitions=PARTITIONS) as running:
        yield running


@pytest.fixture
def topics(broker: EmbeddedBroker, request: pytest.FixtureRequest) -> tuple[str, str]:
    """An (exposures, outcomes) pair of topics of this test's own."""
    pair = (f"{request.node.name}.exposures", f"{request.node.name}.outcomes")
    broker.create_topics(pair)
    return pair


def _send(bootstrap: str, topic: str, per_partition: dict[int, int]) -> int:
    """Send ``per_partition[p]`` records of one outcome each to partition ``p``, all in one batch per
    partition (linger), and wait for Kafka's acknowledgements; returns how many were sent."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
    try:
        for partition, n in per_partition.items():
            for i in range(n):
                value = frame_batch([encode_outcome(make_outcome(f"u{partition}-{i}", "click"))])
                producer.send(topic, value, partition=partition)
        producer.flush(30)
    finally:
        producer.close()
    return sum(per_partition.values())


class RunningConsumer:
    """The analytics consumer in a thread of this process, storing into a DuckDB store, until ``stop``."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: tuple[str, str],
        store_path: Path,
        commit_interval_s: float = 2.0,
    ) -> None:
        self.store = DuckDBEventStore(store_path)
        self.consumer = AnalyticsConsumer(
            bootstrap,
            self.store,
            group_id=group,
            topics=topics,
            session_timeout_ms=6000,
            commit_interval_s=commit_interval_s,
        )
        self.thread = threading.Thread(target=self.consumer.run, name="analytics-consumer", daemon=True)
        self.thread.start()

    def stop(self) -> dict[str, int]:
        """Stop it (it stores and commits what it read) and return the store's counts."""
        self.consumer.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the consumer did not stop"
        try:
            return self.store.counts()
        finally:
            self.store.close()


def test_end_offsets_count_every_record_of_a_batch(broker: EmbeddedBroker, topics: tuple[str, str]) -> None:
    """One batch of 3 records ends at 3. (Tansu's ListOffsets answers 1 there, its last batch's base + 1, and
    a wait up to that would have ended with 2 records unread.)"""
    exposures, outcomes = topics
    _send(broker.bootstrap, outcomes, {0: 3, 2: 1})
    ends = end_offsets(broker.bootstrap, topics)
    assert ends == {
        **{TopicPartition(exposures, p): 0 for p in range(PARTITIONS)},
        **{TopicPartition(outcomes, p): n for p, n in enumerate((3, 0, 1, 0))},
    }


@pytest.mark.timeout(120)
def test_waits_until_every_record_is_stored_and_no_longer(
    broker: EmbeddedBroker, topics: tuple[str, str], tmp_path: Path
) -> None:
    """The wait starts before the consumer does, so the group has stored nothing yet; it returns once the
    consumer has stored every record, long before its cap (the pytest timeout fails a wait for the cap)."""
    exposures, outcomes = topics
    sent = _send(broker.bootstrap, outcomes, {0: 40, 1: 25, 2: 1, 3: 60})
    ends = end_offsets(broker.bootstrap, topics)
    assert sum(ends.values()) == sent
    heard: list[tuple[int, int]] = []
    running: list[RunningConsumer] = []

    def progress(left: int, records: int) -> None:
        heard.append((left, records))
        if not running:  # the first report: nothing is stored yet, now the consumer starts
            running.append(RunningConsumer(broker.bootstrap, "drain-all", topics, tmp_path / "events"))

    try:
        drain = wait_until_consumed(broker.bootstrap, "drain-all", ends, NO_CAP_S, progress)
    finally:
        counts = running[0].stop() if running else {}
    assert heard[0] == (sent, sent)
    assert drain.caught_up and drain.records_left == 0 and drain.records == sent
    assert dict(drain.committed) == {tp: n for tp, n in ends.items() if n}
    assert counts["outcomes"] == sent  # every outcome is in the store the report reads


@pytest.mark.timeout(120)
def test_the_cap_reports_the_records_left_per_partition(
    broker: EmbeddedBroker, topics: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A consumer that stored the first records and then stopped: the wait ends at its cap, not caught up,
    and the warning names exactly the records sent after it stopped, and where they are."""
    exposures, outcomes = topics
    first = _send(broker.bootstrap, outcomes, {0: 10, 1: 10, 2: 10, 3: 10})
    consumer = RunningConsumer(broker.bootstrap, "drain-stopped", topics, tmp_path / "events")
    try:
        stored = wait_until_consumed(
            broker.bootstrap, "drain-stopped", end_offsets(broker.bootstrap, topics), NO_CAP_S
        )
    finally:
        counts = consumer.stop()
    assert stored.caught_up and counts["outcomes"] == first
    later = _send(broker.bootstrap, outcomes, {1: 7, 3: 2}) + _send(broker.bootstrap, exposures, {0: 1})

    stopped: list[bool] = []
    drain = drain_consumer(broker.bootstrap, topics, "drain-stopped", 1.0, lambda: stopped.append(True))
    assert stopped == [True] and not drain.caught_up
    assert drain.records_left == later == 10 and drain.records == first + later
    assert drain.left == {
        TopicPartition(exposures, 0): 1, TopicPartition(outcomes, 1): 7, TopicPartition(outcomes, 3): 2,
    }  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("warning: the analytics consumer had not stored every event after 1 s: ")
    assert f"10 of {first + later} Kafka records were left unconsumed" in err
    assert f"({exposures}[0] 1, {outcomes}[1] 7, {outcomes}[3] 2)" in err
    assert "may be incomplete" in err
    assert drain.to_dict() == {
        "caught_up": False,
        "records": first + later,
        "records_left": 10,
        "left": {f"{exposures}[0]": 1, f"{outcomes}[1]": 7, f"{outcomes}[3]": 2},
    }


@pytest.mark.timeout(120)
def test_after_the_cap_what_the_consumer_stores_as_it_stops_counts(
    broker: EmbeddedBroker, topics: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A consumer that has read every record but not committed yet (its commit interval is an hour) when the
    cap comes stores and commits them as it is stopped: nothing is left, so there is no warning (one said
    "0 of 53 records were left unconsumed")."""
    exposures, outcomes = topics
    sent = _send(broker.bootstrap, outcomes, {0: 20, 1: 30, 3: 3})
    consumer = RunningConsumer(
        broker.bootstrap, "drain-late", topics, tmp_path / "events", commit_interval_s=3600
    )
    counts: dict[str, int] = {}
    try:
        while consumer.consumer.records_seen < sent:  # read, not stored: the pytest timeout bounds this
            time.sleep(0.05)
        drain = drain_consumer(
            broker.bootstrap, topics, "drain-late", 0.5, lambda: counts.update(consumer.stop())
        )
    finally:
        counts = counts or consumer.stop()
    assert drain.caught_up and drain.records_left == 0 and drain.records == sent
    assert counts["outcomes"] == sent
    out, err = capsys.readouterr()
    assert f"consumer: all {sent} records stored" in out and "warning" not in err


def test_a_group_that_committed_nothing_has_every_record_left() -> None:
    """No committed offset for a partition means nothing of it is stored; an empty one is never behind."""
    a, b, c = (TopicPartition("t", p) for p in range(3))
    drain = Drain({a: 5, b: 0, c: 2}, {c: 2})
    assert drain.left == {a: 5} and drain.records_left == 5 and not drain.caught_up
    assert Drain({a: 0, b: 0}).caught_up
