"""Exposures reach Kafka through the real EventProducer and the embedded broker, one per logged assignment."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grpc import aio
from kafka import KafkaConsumer, TopicPartition

from analytics.events.messages import decode_batch
from analytics.events.producer import EventProducer
from analytics.kafka.broker import EmbeddedBroker
from proto import events_pb2, ranking_pb2, ranking_pb2_grpc
from ranker_server.app import running_server
from tests.ranker_server.conftest import FakeRouter, MutableSource, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPIC = "ranker-test.exposures"


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(topics=(TOPIC,), partitions=2) as running:
        yield running


def read_exposures(
    bootstrap: str,
    expected: int,
    timeout_s: float = 30.0,
    wanted: Callable[[events_pb2.Exposure], bool] = lambda exposure: True,
) -> list[events_pb2.Exposure]:
    """The ``wanted`` exposures on the topic, read from the start until ``expected`` of them arrived."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        deadline = time.monotonic() + timeout_s
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(TOPIC)
        partitions = [TopicPartition(TOPIC, p) for p in sorted(parts or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        found: list[events_pb2.Exposure] = []
        while len(found) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    batch = decode_batch(record.value)
                    found += [
                        e.exposure for e in batch.events if e.HasField("exposure") and wanted(e.exposure)
                    ]
        return found
    finally:
        consumer.close()


async def test_exposures_arrive_on_kafka(broker: EmbeddedBroker, repository: Path) -> None:
    settings = make_settings(repository, kafka=broker.bootstrap, exposure_topic=TOPIC)
    users = [f"user-{i}" for i in range(10)] + ["out-1", "qa-1"]  # the last two must not be logged
    async with running_server(settings, MutableSource(FakeRouter())) as server:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ranking_pb2_grpc.RankerStub(channel)
            await asyncio.gather(
                *(
                    stub.Rank(
                        ranking_pb2.RankRequest(
                            request_id=f"req-{u}", user_id=u, candidate_ids=[1000, 1001, 1002]
                        )
                    )
                    for u in users
                )
            )
    exposures = await asyncio.to_thread(read_exposures, broker.bootstrap, 10)
    assert sorted(e.request_id for e in exposures) == sorted(f"req-user-{i}" for i in range(10))
    assert all(
        e.experiment_key == "rank-exp" and e.stage == "ranking" and len(e.item_ids) == 3 for e in exposures
    )


async def test_interleaving_exposures_carry_the_teams_through_kafka(
    broker: EmbeddedBroker, repository: Path
) -> None:
    """Through the real EventProducer (which validates version 2) and the broker: teams arrive packed."""
    from experiment_router import Router
    from tests.ranker_server.test_interleaved_rank import config

    settings = make_settings(repository, kafka=broker.bootstrap, exposure_topic=TOPIC)
    users = [f"il-kafka-{i}" for i in range(6)]
    async with running_server(settings, MutableSource(Router.from_dict(config()))) as server:  # type: ignore[arg-type]
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ranking_pb2_grpc.RankerStub(channel)
            responses = await asyncio.gather(
                *(
                    stub.Rank(
                        ranking_pb2.RankRequest(
                            request_id=f"req-{u}", user_id=u, candidate_ids=list(range(1000, 1012)), top_k=8
                        )
                    )
                    for u in users
                )
            )
    found = await asyncio.to_thread(
        read_exposures, broker.bootstrap, len(users), wanted=lambda e: e.experiment_key == "il"
    )
    interleaved = {e.request_id: e for e in found}
    assert all(e.schema_version == events_pb2.SCHEMA_VERSION_2 for e in found)
    assert sorted(interleaved) == sorted(f"req-{u}" for u in users)
    for response in responses:
        exposure = interleaved[response.request_id]
        assert (exposure.experiment_key, exposure.variant_key) == ("il", "interleaved")
        assert list(exposure.item_ids) == list(response.candidate_ids)
        assert list(exposure.teams) == list(response.teams) and len(exposure.teams) == 8
        assert [a.key for a in exposure.arms] == ["control", "treatment"]


async def test_closing_the_producer_leaves_the_event_loop_running(
    broker: EmbeddedBroker, repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """running_server closed the producer on the event loop: while Kafka is away that close waits for it about
    20 s (19.1 s of the loop blocked in /tmp/h-exposure/shutdown.py). Here close() waits for the loop to run a
    task; on the loop itself it waits in vain, up to 10 s."""
    entered, loop_ran, answers = threading.Event(), threading.Event(), []
    close = EventProducer.close

    def close_once_the_loop_runs(self: EventProducer, timeout: float = 10.0) -> None:
        entered.set()
        answers.append(loop_ran.wait(10))
        close(self, timeout)

    async def run_when_entered() -> None:
        while not entered.is_set():
            await asyncio.sleep(0.01)
        loop_ran.set()

    monkeypatch.setattr(EventProducer, "close", close_once_the_loop_runs)
    settings = make_settings(repository, kafka=broker.bootstrap, exposure_topic=TOPIC)
    watcher = asyncio.create_task(run_when_entered())
    async with running_server(settings, MutableSource(FakeRouter())):
        pass
    await watcher
    assert answers == [True]
