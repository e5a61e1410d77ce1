"""Asynchronous exposure logging: a bounded buffer drained into an event sink off the request path.

``log`` never blocks and never raises: when the buffer is full the events are dropped and counted
(``mtrank_exposures_dropped``), and so are those the sink refuses (it returns how many it queued). The sink is
``analytics.events.producer.EventProducer`` in production; any object with ``send_exposures(list[Exposure])``
works (tests use ``MemorySink``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from proto import common_pb2, events_pb2
from ranker_server import metrics

logger = logging.getLogger(__name__)


class ExposureSink(Protocol):
    def send_exposures(self, exposures: list[events_pb2.Exposure]) -> int | None:
        """Queue or deliver the exposures; returns how many it took (the Kafka producer takes none when it
        has no room), None for all."""
        ...


class MemorySink:
    """Keeps every exposure in a list (tests, embedding the server without Kafka)."""

    def __init__(self) -> None:
        self.exposures: list[events_pb2.Exposure] = []

    def send_exposures(self, exposures: list[events_pb2.Exposure]) -> None:
        self.exposures.extend(exposures)


@dataclass(frozen=True)
class ExposureRecord:
    """What the data plane knows about one exposure; turned into the event off the request path."""

    request_id: str
    user_id: str
    experiment_key: str
    variant_key: str
    variation_id: int
    stage: str
    model_name: str
    model_version: str
    item_ids: Sequence[int]
    event_time_ms: int
    teams: Sequence[int] = ()  # interleaving: the arm index of each item
    arms: Sequence[tuple[str, str, str]] = ()  # interleaving: (variation key, model name, version) per arm


def to_event(record: ExposureRecord) -> events_pb2.Exposure:
    """The Exposure event; an interleaving one is schema version 2, with teams and arms instead of a model."""
    event = events_pb2.Exposure(
        event_id=uuid.uuid4().hex,
        schema_version=events_pb2.SCHEMA_VERSION_1,
        request_id=record.request_id,
        user_id=record.user_id,
        experiment_key=record.experiment_key,
        variant_key=record.variant_key,
        variation_id=record.variation_id,
        stage=record.stage,
        event_time_ms=record.event_time_ms,
        item_ids=list(record.item_ids),
    )
    if record.arms:
        event.schema_version = events_pb2.SCHEMA_VERSION_2
        event.teams.extend(record.teams)
        for key, name, version in record.arms:
            event.arms.add(key=key, model=common_pb2.ModelRef(name=name, version=version))
    else:
        event.model.name, event.model.version = record.model_name, record.model_version
    return event


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ExposureLogger:
    """Buffers exposure records (at most ``capacity``) and hands them to ``sink`` in batches."""

    def __init__(self, sink: ExposureSink, capacity: int = 10000, batch_size: int = 500) -> None:
        self._sink = sink
        self._capacity = capacity
        self._batch_size = batch_size
        self._buffer: deque[ExposureRecord] = deque()
        self._wakeup = asyncio.Event()
        # One dedicated thread: the sink's own work never competes with the inference executor.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exposures")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._dropped_while_full = 0  # since the buffer last overflowed; logged when it is next empty

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain_forever())

    def log(self, records: Sequence[ExposureRecord]) -> None:
        """Queue ``records``; drops (and counts) those that do not fit. Never blocks or raises."""
        room = self._capacity - len(self._buffer)
        if room < len(records):
            self._overflow(len(records) - max(room, 0))
            records = records[: max(room, 0)]
        self._buffer.extend(records)
        metrics.EXPOSURE_BUFFER.set(len(self._buffer))
        if records:
            self._wakeup.set()

    async def _drain_forever(self) -> None:
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._drain()

    def _overflow(self, dropped: int) -> None:
        """Count exposures the full buffer drops; log only the first of an overflow (it spans requests)."""
        metrics.EXPOSURES_DROPPED.inc(dropped)
        if not self._dropped_while_full:
            logger.warning(
                "exposure buffer full (%d events): dropping exposures until the event producer catches up "
                "(counted in mtrank_exposures_dropped_total)",
                self._capacity,
            )
        self._dropped_while_full += dropped

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))]
            metrics.EXPOSURE_BUFFER.set(len(self._buffer))
            try:
                queued = await loop.run_in_executor(self._thread, self._send, batch)
            except Exception:  # the producer promises not to raise; if it does, count the loss and go on
                logger.exception("exposure sink failed; %d events dropped", len(batch))
                queued = 0
            metrics.EXPOSURES_SENT.inc(queued)
            metrics.EXPOSURES_DROPPED.inc(len(batch) - queued)
        if self._dropped_while_full:
            dropped, self._dropped_while_full = self._dropped_while_full, 0
            logger.warning("exposure buffer emptied; %d exposures were dropped while it was full", dropped)

    def _send(self, batch: list[ExposureRecord]) -> int:
        """How many exposures of ``batch`` the sink took; those it refuses are lost (the producer is full)."""
        queued = self._sink.send_exposures([to_event(r) for r in batch])
        return len(batch) if queued is None else queued

    async def close(self) -> None:
        """Hand over what is buffered, then stop (the sink's own flush/close is its owner's job).

        The drain task is asked to finish, not cancelled: cancelling it while it waits for the sink's thread
        would cancel a batch the thread has not started yet, and those exposures would be lost.
        """
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._drain()  # what was logged after the task's last look
        self._thread.shutdown(wait=True)
