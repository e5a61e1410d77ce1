"""Micro-batching of concurrent requests for one (model version, variant), after Triton's dynamic batcher.

Requests queue as chunks of at most ``max_batch_rows`` rows (a very large candidate list is split); a worker
takes queued chunks up to ``max_batch_rows`` rows, waiting at most ``max_delay_ms`` for more, runs them as one
ONNX Runtime call (off the event loop) and hands each request its slice. Chunks are ``ModelInput``s, and a
batch holds one kind (rows given in full, or user and item-table rows for the factored graph): it ends where the
kind changes. The queue is bounded in rows: a full queue answers at once (``QueueFull``) instead of growing latency without limit.

At most ``workers`` batches are in ONNX Runtime at once. A request that finds the queue empty and a worker
free, with ``max_delay_ms`` 0, scores its rows itself: a worker would take them alone at once anyway, and
skipping the queue saves two event-loop hand-offs (part of the request-path A/B in
benchmarks/results/ranker.md). Under load requests queue and batch as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from ranker_server import metrics
from ranker_server.config import BatchingSettings
from ranker_server.errors import DeadlineExceeded, ModelNotReady, QueueFull
from ranker_server.inference import ModelInput

logger = logging.getLogger(__name__)

ScoreFn = Callable[[ModelInput], Awaitable[np.ndarray]]


@dataclass
class _Chunk:
    inputs: ModelInput
    deadline: float | None  # loop time
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0
    compute_s: float = 0.0

    @property
    def rows(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class BatchTiming:
    """Where a request's time went, for the queue/compute histograms."""

    queue_s: float
    compute_s: float


class MicroBatcher:
    """Batches the requests of one (model version, variant); never mixes variants or versions."""

    def __init__(
        self,
        score: ScoreFn,
        settings: BatchingSettings,
        model: str,
        version: str,
        workers: int = 1,
    ) -> None:
        self._score = score
        self._settings = settings
        self._labels = (model, version)
        self._queue: deque[_Chunk] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._workers = workers
        self._running = 0  # batches inside ONNX Runtime, queued or direct
        # Series resolved once: ``labels()`` costs ~20 us a call, a request touches these several times.
        self._pending_rows = metrics.QUEUE_ROWS.labels(model, version)
        self._exec_count = metrics.EXEC_COUNT.labels(model, version)
        self._inference_count = metrics.INFERENCE_COUNT.labels(model, version)
        self._batch_size = metrics.BATCH_SIZE.labels(model, version)
        self._tasks = [asyncio.get_running_loop().create_task(self._worker()) for _ in range(workers)]

    async def infer(self, inputs: ModelInput, deadline: float | None = None) -> tuple[np.ndarray, BatchTiming]:
        """Logits for every row, and the time spent queued and computing; ``deadline`` is loop time.

        Raises:
            QueueFull: when the queue cannot take these rows now.
            ModelNotReady: when the batcher is shutting down.
            DeadlineExceeded: when the deadline passed before the rows were scored.
        """
        if self._closing:
            raise ModelNotReady(f"model {'/'.join(self._labels)} is shutting down")
        rows = len(inputs)
        if self._queued_rows + rows > self._settings.max_queue_rows:
            raise QueueFull(
                f"model {'/'.join(self._labels)}: {self._queued_rows} rows queued, limit "
                f"{self._settings.max_queue_rows}; retry with backoff"
            )
        loop = asyncio.get_running_loop()
        step = self._settings.max_batch_rows
        if (
            not self._queue
            and self._running < self._workers
            and rows <= step
            and not self._settings.max_delay_ms
        ):
            return await self._direct(inputs, deadline, loop.time())
        chunks = [_Chunk(part, deadline, loop.create_future()) for part in inputs.split(step)]
        self._queue.extend(chunks)
        self._queued_rows += rows
        self._pending_rows.set(self._queued_rows)
        self._wakeup.set()
        try:
            parts = await asyncio.gather(*(c.future for c in chunks))
        finally:
            for chunk in chunks:  # a cancelled request (client gone, deadline): the worker skips its chunks
                if not chunk.future.done():
                    chunk.future.cancel()
        timing = BatchTiming(max(c.queue_s for c in chunks), sum(c.compute_s for c in chunks))
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), timing

    async def _direct(
        self, inputs: ModelInput, deadline: float | None, now: float
    ) -> tuple[np.ndarray, BatchTiming]:
        """Score one request's rows as its own batch, without the queue (see the module docstring)."""
        if deadline is not None and now > deadline:
            raise DeadlineExceeded("deadline passed before the rows were scored")
        self._running += 1
        try:
            logits, compute = await self._run(inputs)
        finally:
            self._running -= 1
            if self._queue:  # a worker may have waited for this slot
                self._wakeup.set()
        return logits, BatchTiming(0.0, compute)

    async def _run(self, inputs: ModelInput) -> tuple[np.ndarray, float]:
        """Logits of one batch and the seconds it took, counted in the batch metrics."""
        started = time.perf_counter()
        logits = await self._score(inputs)
        compute = time.perf_counter() - started
        self._exec_count.inc()
        self._inference_count.inc(len(inputs))
        self._batch_size.observe(len(inputs))
        return logits, compute

    @property
    def idle(self) -> bool:
        return not self._queue and not self._running

    async def close(self) -> None:
        """Finish what is queued, then stop the workers."""
        self._closing = True
        while self._queue or self._running:
            await asyncio.sleep(0.005)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _next_batch(self) -> list[_Chunk]:
        while not self._queue or self._running >= self._workers:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        limit = self._settings.max_batch_rows
        wait_until = time.perf_counter() + self._settings.max_delay_ms / 1000
        while rows < limit:
            if not self._queue:
                remaining = wait_until - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
                continue
            if rows + self._queue[0].rows > limit or type(self._queue[0].inputs) is not type(batch[0].inputs):
                break
            chunk = self._queue.popleft()
            batch.append(chunk)
            rows += chunk.rows
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self._queued_rows -= sum(c.rows for c in batch)
            self._pending_rows.set(self._queued_rows)
            now = loop.time()
            live = []
            for chunk in batch:
                if chunk.future.done():  # cancelled by its caller
                    continue
                if chunk.deadline is not None and now > chunk.deadline:
                    chunk.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                    continue
                live.append(chunk)
            if live:
                self._running += 1
                try:
                    await self._execute(live)
                finally:
                    self._running -= 1
                    if self._queue:  # another worker may have waited for this slot
                        self._wakeup.set()

    async def _execute(self, batch: list[_Chunk]) -> None:
        started = time.perf_counter()
        inputs = batch[0].inputs if len(batch) == 1 else type(batch[0].inputs).concat([c.inputs for c in batch])
        try:
            logits, compute = await self._run(inputs)
        except Exception as exc:  # the graph failed on this input: every request in the batch learns it
            logger.exception("model %s: batch of %d rows failed", "/".join(self._labels), len(inputs))
            for chunk in batch:
                if not chunk.future.done():
                    chunk.future.set_exception(exc)
            return
        offset = 0
        for chunk in batch:
            chunk.queue_s = started - chunk.enqueued
            chunk.compute_s = compute
            if not chunk.future.done():
                chunk.future.set_result(logits[offset : offset + chunk.rows])
            offset += chunk.rows
