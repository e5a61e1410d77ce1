"""The kafka-python wrapper against the real embedded broker: rebalances that kafka-python leaves unfinished."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from analytics.consumer.kafka_consumer import Consumer
from analytics.kafka.broker import EmbeddedBroker
from analytics.store.base import TopicPartition

pytestmark = pytest.mark.integration


def _stalled_rebalances(group: str) -> float:
    return REGISTRY.get_sample_value("mtrank_analytics_stalled_rebalances_total", {"group": group}) or 0.0


def test_a_rebalance_kafka_python_leaves_unfinished_is_started_again(
    kafka_broker: EmbeddedBroker, fresh_topics: tuple[str, str]
) -> None:
    exposures, outcomes = fresh_topics
    group = f"{exposures}.group"
    assigned: list[set[TopicPartition]] = []
    consumer = Consumer(kafka_broker.bootstrap, group, session_timeout_ms=2_000)
    try:
        consumer.subscribe([exposures], lambda tps: assigned.append(set(tps)), lambda tps: None)
        deadline = time.monotonic() + 30
        while not assigned:
            assert time.monotonic() < deadline, "never joined the group"
            consumer.poll(200)
        # A new subscription starts a rebalance without setting the coordinator's rejoin flag. Polled by
        # kafka-python alone with timeouts that expire while the JoinGroup is in flight (the broker holds it ~1 s),
        # the member stays in that rebalance for good, without partitions: kafka-python 3.0's behaviour that the
        # wrapper works around (if this part fails, kafka-python may have fixed it: re-check the workaround).
        consumer.subscribe([exposures, outcomes], lambda tps: assigned.append(set(tps)), lambda tps: None)
        coordinator = consumer._consumer._coordinator
        stalled_until = time.monotonic() + 4.0  # the broker answers a JoinGroup within about a second
        while time.monotonic() < stalled_until:
            consumer._consumer.poll(timeout_ms=1)
            time.sleep(0.05)
        assert coordinator.rebalance_in_progress() and not coordinator.need_rejoin()
        assert len(assigned) == 1, "kafka-python finished the rebalance by itself"

        before = _stalled_rebalances(group)
        deadline = time.monotonic() + 30
        while len(assigned) == 1:
            assert time.monotonic() < deadline, "the wrapper's poll did not finish the rebalance"
            consumer.poll(200)
        every = {TopicPartition(topic, p) for topic in (exposures, outcomes) for p in range(4)}
        assert assigned[-1] == every
        assert _stalled_rebalances(group) - before == 1
    finally:
        consumer.close()
