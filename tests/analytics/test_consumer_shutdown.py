"""Stopping the analytics consumer while Kafka hangs: the final offset commit and the close wait for the
broker only as long as their timeouts, not kafka-python's 30 s request timeout, so a SIGTERM'd pod stops
before its grace period ends (it took 30.4 s with a broker stopped by SIGSTOP, and was killed)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from analytics.consumer.kafka_consumer import CLOSE_TIMEOUT_MS, COMMIT_TIMEOUT_MS
from analytics.consumer.processor import AnalyticsConsumer
from analytics.events.messages import encode_outcome, frame_batch, make_outcome
from analytics.kafka.broker import EmbeddedBroker
from analytics.store import MemoryEventStore

pytestmark = pytest.mark.integration

TOPICS = ("shutdown.exposures", "shutdown.outcomes")


def _spy(target: Any, name: str, calls: list[tuple[str, int | None]], patch: pytest.MonkeyPatch) -> None:
    """Record the ``timeout_ms`` of each call to ``target.name``, then make the real call."""
    real = getattr(target, name)

    def spy(*args: Any, timeout_ms: int | None = None, **kwargs: Any) -> Any:
        calls.append((name, timeout_ms))
        return real(*args, timeout_ms=timeout_ms, **kwargs)

    patch.setattr(target, name, spy)


def test_a_hung_broker_holds_up_the_stop_only_for_the_commit_and_close_timeouts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events read but not committed yet when the broker stops answering (its process stopped: connections
    stay open, requests go unanswered) and the consumer is asked to stop: they are stored, the Kafka commit
    gives up after its timeout with a warning instead of an exception, and the close is bounded too."""
    outcomes = [make_outcome(f"u{i}", "click") for i in range(20)]
    store = MemoryEventStore()
    with EmbeddedBroker(topics=TOPICS, partitions=1, data_dir=tmp_path) as broker:  # its own: it is stopped
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        try:
            value = frame_batch(encode_outcome(o) for o in outcomes)
            producer.send(TOPICS[1], value, key=b"u").get(timeout=10)
        finally:
            producer.close()
        # no commit is due before the stop: the final one has offsets to commit
        consumer = AnalyticsConsumer(
            broker.bootstrap, store, group_id="shutdown", topics=TOPICS, session_timeout_ms=6_000,
            commit_interval_s=600, commit_every_events=10_000,
        )  # fmt: skip
        calls: list[tuple[str, int | None]] = []
        _spy(consumer.consumer._consumer, "commit", calls, monkeypatch)
        _spy(consumer.consumer._consumer, "close", calls, monkeypatch)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                consumer.run()
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 60
        while consumer.records_seen == 0 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert consumer.records_seen == 1, "the consumer read nothing"
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            with caplog.at_level(logging.WARNING, logger="analytics.consumer"):
                consumer.stop()
                thread.join(timeout=120)
            assert not thread.is_alive()
        finally:
            os.kill(broker.pid, signal.SIGCONT)
    assert errors == []
    assert store.counts()["outcomes"] == len(outcomes)
    assert calls == [("commit", COMMIT_TIMEOUT_MS), ("close", CLOSE_TIMEOUT_MS)]
    assert "Kafka offset commit failed (KafkaTimeoutError" in caplog.text
