"""Kafka fixtures for the analytics tests: one real embedded broker per session (no mocks)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaConsumer, TopicPartition

from analytics.events.messages import decode_batch
from analytics.kafka.broker import EmbeddedBroker
from proto import events_pb2


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedBroker]:
    """A session-wide Tansu broker with the default topics (4 partitions each)."""
    with EmbeddedBroker(partitions=4) as broker:
        yield broker


@pytest.fixture()
def fresh_topics(kafka_broker: EmbeddedBroker, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A pair of (exposures, outcomes) topics unique to the test, so tests never see each other's events."""
    base = request.node.name.replace("[", "_").replace("]", "").replace("/", "_")[:60]
    topics = (f"{base}.exposures", f"{base}.outcomes")
    kafka_broker.create_topics(topics, partitions=4)
    return topics


def read_topic_events(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0
) -> list[events_pb2.Event]:
    """Read a topic from the start (no group) until ``expected`` events arrived or ``timeout_s`` passed."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        deadline = time.monotonic() + timeout_s
        parts: set[int] | None = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
        assert parts, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        events: list[events_pb2.Event] = []
        while len(events) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    events.extend(decode_batch(record.value).events)
        return events
    finally:
        consumer.close()


@pytest.fixture()
def topic_reader() -> Callable[..., list[events_pb2.Event]]:
    """``read(bootstrap, topic, expected, timeout_s)``: every event on a topic, read without a group."""
    return read_topic_events
