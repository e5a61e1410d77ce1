"""Records Kafka deleted (retention) before the consumer read them are counted and logged, not skipped.

A consumer that resumes at an offset below the log's start (it was down, or lagged, longer than the topic's
retention) gets OFFSET_OUT_OF_RANGE; kafka-python then starts again at the log's start
(``auto_offset_reset``) and logs one INFO line: the records in between were never read, and nothing said so.
The embedded Tansu broker cannot delete records (DeleteRecords panics with "not yet implemented", retention
settings are ignored), so the count itself is checked on ``records_lost_to_retention``; against the broker,
an offset jump that loses nothing (a transaction marker) is checked against the log start and not counted.
"""

from __future__ import annotations

import logging

import pytest
from kafka import KafkaProducer
from prometheus_client import REGISTRY

from analytics.consumer.processor import AnalyticsConsumer, records_lost_to_retention
from analytics.events.messages import encode_outcome, frame_batch, make_outcome
from analytics.kafka.broker import EmbeddedBroker
from analytics.store import MemoryEventStore

SESSION_MS = 2_000


@pytest.mark.parametrize(
    ("expected", "first_read", "log_start", "lost"),
    [
        (100, 150, 150, 50),  # resumed at 100, the log starts at 150: 100..149 were deleted unread
        (100, 150, 170, 50),  # the log start moved on after the read: only 100..149 were skipped
        (100, 100, 150, 0),  # no jump
        (3, 4, 0, 0),  # a transaction marker at offset 3: nothing deleted
        (0, 7, 7, 7),  # a new log generation read from 0 whose first 7 records are gone
    ],
)
def test_records_lost_to_retention_are_those_below_the_log_start(
    expected: int, first_read: int, log_start: int, lost: int
) -> None:
    assert records_lost_to_retention(expected, first_read, log_start) == lost


def _expired(topic: str, partition: int) -> float:
    labels = {"topic": topic, "partition": str(partition)}
    return REGISTRY.get_sample_value("mtrank_analytics_records_expired_total", labels) or 0.0


@pytest.mark.integration
def test_an_offset_jump_over_a_transaction_marker_is_checked_and_loses_nothing(
    kafka_broker: EmbeddedBroker, fresh_topics: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A committed transaction leaves a marker at the offset after its records: the next record is one offset
    further on. The consumer asks the broker where the log starts (0 here), finds nothing deleted and counts
    nothing; every event is stored."""
    outcomes = [make_outcome(f"u{i}", "click", event_time_ms=1_000 + i) for i in range(10)]
    topic = fresh_topics[1]
    transactional = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, transactional_id=f"{topic}.tx")
    try:
        transactional.init_transactions()
        transactional.begin_transaction()
        transactional.send(topic, frame_batch([encode_outcome(o) for o in outcomes[:5]]), partition=0)
        transactional.commit_transaction()  # the record at offset 0, the commit marker at offset 1
    finally:
        transactional.close()
    plain = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        plain.send(topic, frame_batch([encode_outcome(o) for o in outcomes[5:]]), partition=0).get(timeout=10)
    finally:
        plain.close()
    store = MemoryEventStore()
    consumer = AnalyticsConsumer(
        kafka_broker.bootstrap, store, group_id=f"{topic}.jump", topics=fresh_topics,
        session_timeout_ms=SESSION_MS, commit_interval_s=0.1,
    )  # fmt: skip
    before = _expired(topic, 0)
    with caplog.at_level(logging.DEBUG, logger="analytics.consumer"):
        consumer.run(max_seconds=30, idle_exit_s=2)
    assert store.counts()["outcomes"] == 10
    assert f"{topic}[0]: offsets 1 to 1 were skipped, at or above the log start 0" in caplog.text
    assert _expired(topic, 0) - before == 0
    assert "deleted by Kafka before they were read" not in caplog.text
