"""Micro-batcher on a stand-in run function: merging, splitting, back-pressure, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ranker_server.batching import MicroBatcher
from ranker_server.config import BatchingSettings
from ranker_server.errors import DeadlineExceeded, QueueFull
from ranker_server.inference import GraphRows, ModelInput, UserItemRows


class Recorder:
    """Returns each row's first sparse value as its logit and records the batch sizes it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        self.gate.wait(5)
        time.sleep(self.delay_s)
        self.sizes.append(len(sparse))
        return sparse[:, :1].astype(np.float32)


def scorer(run: Recorder, executor: ThreadPoolExecutor):
    """The batcher's async scoring function around a blocking stand-in (as ORT without its async run)."""

    async def score(inputs: GraphRows) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(executor, run, inputs.sparse, inputs.dense)

    return score


def rows(start: int, n: int) -> GraphRows:
    return GraphRows(np.arange(start, start + n, dtype=np.int64).reshape(-1, 1), np.zeros((n, 0), np.float32))


@pytest.fixture
def executor():
    with ThreadPoolExecutor(1) as pool:
        yield pool


async def test_concurrent_requests_merge_and_get_their_own_rows(executor) -> None:
    run = Recorder()
    run.gate.clear()  # hold the first batch so that the others queue up behind it
    batcher = MicroBatcher(
        scorer(run, executor), BatchingSettings(max_batch_rows=100, max_delay_ms=0), "m", "1"
    )
    calls = [asyncio.ensure_future(batcher.infer(rows(0, 10)))]
    await asyncio.sleep(0.02)
    calls += [asyncio.ensure_future(batcher.infer(rows(i * 10, 10))) for i in range(1, 8)]
    await asyncio.sleep(0.02)
    run.gate.set()
    results = await asyncio.gather(*calls)
    for i, (logits, timing) in enumerate(results):
        assert logits[:, 0].tolist() == list(range(i * 10, i * 10 + 10))
        assert timing.compute_s > 0
    assert run.sizes == [10, 70], "the first batch runs alone, the seven queued behind it share one call"
    await batcher.close()


async def test_max_delay_waits_for_company(executor) -> None:
    run = Recorder()
    batcher = MicroBatcher(
        scorer(run, executor), BatchingSettings(max_batch_rows=100, max_delay_ms=50), "m", "1"
    )
    first = asyncio.ensure_future(batcher.infer(rows(0, 5)))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(batcher.infer(rows(5, 5)))
    await asyncio.gather(first, second)
    assert run.sizes == [10]
    await batcher.close()


async def test_large_requests_are_split_and_reassembled(executor) -> None:
    run = Recorder()
    batcher = MicroBatcher(
        scorer(run, executor), BatchingSettings(max_batch_rows=64, max_delay_ms=0), "m", "1"
    )
    logits, _ = await batcher.infer(rows(0, 300))
    assert logits[:, 0].tolist() == list(range(300))
    assert max(run.sizes) <= 64 and sum(run.sizes) == 300
    await batcher.close()


async def test_full_queue_raises_queue_full(executor) -> None:
    run = Recorder()
    run.gate.clear()
    batcher = MicroBatcher(
        scorer(run, executor), BatchingSettings(max_batch_rows=10, max_queue_rows=30), "m", "1"
    )
    held = [asyncio.ensure_future(batcher.infer(rows(0, 10))) for _ in range(3)]
    await asyncio.sleep(0.05)  # one batch is running, two wait: 20 rows queued
    with pytest.raises(QueueFull, match="retry"):
        await batcher.infer(rows(0, 11))
    held.append(asyncio.ensure_future(batcher.infer(rows(0, 10))))  # exactly fills the queue: accepted
    run.gate.set()
    await asyncio.gather(*held)
    await batcher.close()


async def test_expired_requests_are_not_computed(executor) -> None:
    run = Recorder()
    run.gate.clear()
    batcher = MicroBatcher(scorer(run, executor), BatchingSettings(max_batch_rows=10), "m", "1")
    blocker = asyncio.ensure_future(batcher.infer(rows(0, 10)))
    await asyncio.sleep(0.02)
    loop = asyncio.get_running_loop()
    late = asyncio.ensure_future(batcher.infer(rows(100, 3), deadline=loop.time() + 0.01))
    await asyncio.sleep(0.05)
    run.gate.set()
    await blocker
    with pytest.raises(DeadlineExceeded):
        await late
    assert run.sizes == [10]
    await batcher.close()


async def test_an_idle_batcher_scores_a_lone_request_without_queueing(executor) -> None:
    run = Recorder()
    batcher = MicroBatcher(scorer(run, executor), BatchingSettings(max_batch_rows=100), "m", "1")
    logits, timing = await batcher.infer(rows(0, 5))
    assert logits[:, 0].tolist() == list(range(5))
    assert timing.queue_s == 0.0 and timing.compute_s > 0
    assert run.sizes == [5]
    await batcher.close()


async def test_no_more_batches_than_workers_run_at_once() -> None:
    """Direct and queued batches share the ``workers`` slots: the rest queue and merge."""
    running, peak = 0, 0
    lock = threading.Lock()

    def run(sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return sparse[:, :1].astype(np.float32)

    with ThreadPoolExecutor(4) as pool:  # more threads than workers: the batcher must do the limiting
        batcher = MicroBatcher(scorer(run, pool), BatchingSettings(max_batch_rows=100), "m", "1", workers=2)
        results = await asyncio.gather(*(batcher.infer(rows(i * 3, 3)) for i in range(12)))
        await batcher.close()
    for i, (logits, _) in enumerate(results):
        assert logits[:, 0].tolist() == list(range(i * 3, i * 3 + 3))
    assert peak == 2


def user_rows(user: int, items: list[int]) -> UserItemRows:
    n = len(items)
    return UserItemRows(
        np.array([[user]], np.int64), np.zeros((1, 0), np.float32), np.array(items, np.int64), np.zeros(n, np.int64)
    )


async def test_user_item_rows_batch_with_their_users_and_apart_from_full_rows(executor) -> None:
    """Requests of the factored graph merge with each candidate still pointing at its own user row; a batch
    never mixes them with rows given in full (the two kinds go to different graphs)."""
    seen: list[ModelInput] = []
    gate = threading.Event()

    def run(inputs: ModelInput) -> np.ndarray:
        gate.wait(5)
        seen.append(inputs)
        if isinstance(inputs, UserItemRows):  # logit = 100 * user + item, from the user row of each candidate
            return (100 * inputs.user_sparse[inputs.segment, 0] + inputs.rows).astype(np.float32)[:, None]
        return inputs.sparse[:, :1].astype(np.float32)

    async def score(inputs: ModelInput) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(executor, run, inputs)

    batcher = MicroBatcher(score, BatchingSettings(max_batch_rows=100), "m", "1")
    first = asyncio.ensure_future(batcher.infer(user_rows(9, [1])))  # direct; holds the only worker
    await asyncio.sleep(0.05)
    calls = [
        asyncio.ensure_future(batcher.infer(user_rows(1, [3, 4]))),
        asyncio.ensure_future(batcher.infer(user_rows(2, [5, 6, 7]))),
        asyncio.ensure_future(batcher.infer(rows(40, 2))),
        asyncio.ensure_future(batcher.infer(user_rows(3, [8]))),
    ]
    await asyncio.sleep(0.05)
    gate.set()
    results = [logits[:, 0].tolist() for logits, _ in await asyncio.gather(first, *calls)]
    await batcher.close()
    assert results == [[901], [103, 104], [205, 206, 207], [40, 41], [308]]
    assert [(type(s).__name__, len(s)) for s in seen] == [
        ("UserItemRows", 1),
        ("UserItemRows", 5),
        ("GraphRows", 2),
        ("UserItemRows", 1),
    ]
    merged = seen[1]
    assert merged.user_sparse[:, 0].tolist() == [1, 2] and merged.segment.tolist() == [0, 0, 1, 1, 1]


def test_user_item_rows_split_keeps_the_user() -> None:
    parts = user_rows(4, list(range(5))).split(2)
    assert [p.rows.tolist() for p in parts] == [[0, 1], [2, 3], [4]]
    assert all(p.user_sparse.tolist() == [[4]] and p.segment.tolist() == [0] * len(p) for p in parts)
