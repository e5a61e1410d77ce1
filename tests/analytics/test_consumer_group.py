"""Several writers of one store: a consumer whose offsets another consumer has overtaken.

A member that stalls past its session (a long GC pause, a frozen VM; reproduced with SIGSTOP) is evicted from
the group, and its partitions move to another member, which stores later offsets of them. When the stalled
member resumes it still holds events it had read; storing them with its older offsets raised
``OffsetBackwards`` and the process exited with a traceback (in about half of the SIGSTOP runs, depending on
how much the resumed member read before it wrote). Two groups writing to one store do the same, in an order a
test can fix.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from analytics.consumer.checkpoint import Checkpoint
from analytics.consumer.processor import AnalyticsConsumer
from analytics.events.messages import make_outcome
from analytics.events.producer import EventProducer
from analytics.kafka.broker import EmbeddedBroker
from analytics.store import DuckDBEventStore, EventStore, MemoryEventStore, OutcomeRow, TopicPartition

SESSION_MS = 2_000


def test_a_checkpoint_behind_another_writer_stores_its_events_and_keeps_the_later_offset() -> None:
    store = MemoryEventStore()
    tp, other = TopicPartition("t", 0), TopicPartition("t", 1)
    store.apply([], [OutcomeRow("o9", "u", "click", 1, 1.0)], {tp: 9})  # another member got to offset 9
    checkpoint = Checkpoint(store, consumer=None)
    checkpoint.start_partition(tp, last_applied=None)
    checkpoint.start_partition(other, last_applied=None)
    checkpoint.outcomes.append(OutcomeRow("o4", "u", "click", 1, 1.0))
    checkpoint.outcomes.append(OutcomeRow("p2", "u", "click", 1, 1.0))
    checkpoint.set_offset(tp, 4)
    checkpoint.set_offset(other, 2)
    assert checkpoint.persist() == {other: 2}, "only the offsets this checkpoint is the latest for"
    assert store.offsets() == {tp: 9, other: 2} and store.counts()["outcomes"] == 3 and checkpoint.empty


def _produce(bootstrap: str, topics: tuple[str, str], tmp_path: Path, first: int, count: int) -> None:
    outcomes = [make_outcome(f"u{i}", "click", event_time_ms=1_000 + i) for i in range(first, first + count)]
    with EventProducer(
        bootstrap, exposures_topic=topics[0], outcomes_topic=topics[1],
        journal_path=tmp_path / f"p{first}.journal", max_events_per_record=10,
    ) as producer:  # fmt: skip
        producer.send_outcomes(outcomes)
        assert producer.flush(30)


def _outcomes(store: EventStore) -> int:
    return store.counts()["outcomes"]


def _read(consumer: AnalyticsConsumer, events: int) -> None:
    """Poll until ``events`` more events are in the consumer's checkpoint (none is stored: none is due)."""
    deadline, read = time.monotonic() + 30, 0
    while read < events:
        assert time.monotonic() < deadline, f"read {read} of {events} events"
        read += consumer.poll_once()


@pytest.mark.integration
def test_a_consumer_overtaken_by_another_writer_of_its_store_keeps_consuming(
    kafka_broker: EmbeddedBroker,
    fresh_topics: tuple[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = DuckDBEventStore(tmp_path / "store")
    behind = AnalyticsConsumer(
        kafka_broker.bootstrap, store, group_id=f"{fresh_topics[0]}.behind", topics=fresh_topics,
        session_timeout_ms=SESSION_MS, commit_interval_s=3600, commit_every_events=10**9,
    )  # fmt: skip
    ahead = AnalyticsConsumer(
        kafka_broker.bootstrap, store, group_id=f"{fresh_topics[0]}.ahead", topics=fresh_topics,
        session_timeout_ms=SESSION_MS, commit_interval_s=0.1,
    )  # fmt: skip
    behind.subscribe()
    try:
        _produce(kafka_broker.bootstrap, fresh_topics, tmp_path, 0, 400)
        _read(behind, 400)
        _produce(kafka_broker.bootstrap, fresh_topics, tmp_path, 400, 400)
        ahead.run(max_seconds=60, idle_exit_s=2)  # stores every event, at offsets past those ``behind`` holds
        overtaken = store.offsets()
        assert _outcomes(store) == 800
        with caplog.at_level(logging.WARNING, logger="analytics.consumer"):
            behind.commit()  # its events are stored again (counted once), the later offsets stay
        assert "another consumer stored offset" in caplog.text
        assert store.offsets() == overtaken and _outcomes(store) == 800
        _read(behind, 400)  # it goes on where it was
        _produce(kafka_broker.bootstrap, fresh_topics, tmp_path, 800, 400)
        _read(behind, 400)
        behind.commit()
        assert _outcomes(store) == 1_200
        outcome_offsets = {tp: o for tp, o in store.offsets().items() if tp.topic == fresh_topics[1]}
        assert all(offset > overtaken.get(tp, -1) for tp, offset in outcome_offsets.items())
    finally:
        behind.consumer.close()
        store.close()
