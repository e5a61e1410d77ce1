"""Kafka fixtures for the analytics tests: one real embedded broker per session (no mocks)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from analytics.kafka.broker import EmbeddedBroker


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
