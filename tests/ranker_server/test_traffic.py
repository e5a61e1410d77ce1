"""Sequential traffic: when a lone ONNX Runtime run may take the event loop's thread, not an executor's."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import REGISTRY

from proto import ranking_pb2
from ranker_server.config import RuntimeSettings
from ranker_server.inference import LOOP_MAX_ROWS, GraphRows, OnnxRanker
from ranker_server.traffic import SequentialTraffic
from tests.ranker_server.conftest import FakeRouter, MutableSource, Running, serving
from tests.ranker_server.test_inference import golden


def test_calls_that_begin_alone_after_a_gap_become_sequential_after_the_streak() -> None:
    traffic = SequentialTraffic(min_gap_s=0.001, streak=2)
    assert not traffic.sequential  # nothing seen yet
    traffic.begin(1.000)
    assert not traffic.sequential  # one call alone: not yet a streak
    traffic.end(1.003)
    traffic.begin(1.010)
    assert traffic.sequential
    traffic.end(1.013)
    traffic.begin(1.020)
    assert traffic.sequential


def test_a_call_that_overlaps_or_follows_the_last_one_at_once_resets_the_streak() -> None:
    traffic = SequentialTraffic(min_gap_s=0.001, streak=2)
    for start in (0.0, 0.01):
        traffic.begin(start)
        traffic.end(start + 0.003)
    traffic.begin(0.020)
    assert traffic.sequential
    traffic.begin(0.021)  # a second call in flight
    assert not traffic.sequential
    traffic.end(0.023)
    traffic.end(0.024)
    traffic.begin(0.030)
    assert not traffic.sequential  # the overlap reset the streak: one alone again
    traffic.end(0.033)
    traffic.begin(0.0335)  # 0.5 ms after the last one ended: it waited behind it, as under load
    assert not traffic.sequential
    traffic.end(0.036)
    traffic.begin(0.040)
    assert not traffic.sequential
    traffic.end(0.043)
    traffic.begin(0.050)  # two in a row alone, after gaps: a streak again
    assert traffic.sequential


class _Threads:
    """A session stand-in that records the thread each run ran on."""

    def __init__(self, session: ort.InferenceSession, threads: list[str]) -> None:
        self.session, self.threads = session, threads

    def run(self, outputs, feeds):
        self.threads.append(threading.current_thread().name)
        return self.session.run(outputs, feeds)


def _record(runner: OnnxRanker, threads: list[str]) -> None:
    """Both sessions of ``runner`` append the name of the thread each run takes to ``threads``."""
    runner.session = _Threads(runner.session, threads)
    runner._alone_session = _Threads(runner._alone_session, threads)


@pytest.mark.parametrize("spinning", ["alone", "off"])
async def test_a_lone_run_takes_the_loop_thread_only_while_calls_arrive_one_at_a_time(
    repository: Path, spinning: str
) -> None:
    graph = str(repository / "tiny" / "1" / "model.onnx")
    runner = OnnxRanker(graph, RuntimeSettings(spinning=spinning, split_rows=0), "t")  # one run per call
    threads: list[str] = []
    _record(runner, threads)
    data = golden(repository)
    rows = GraphRows(data["sparse"], data["dense"])
    loop_thread = threading.current_thread().name
    traffic = SequentialTraffic(min_gap_s=0.001, streak=1)
    with ThreadPoolExecutor(2, thread_name_prefix="ort") as executor:
        results = [await runner.infer(rows, executor)]  # no traffic given: always the executor
        results.append(await runner.infer(rows, executor, traffic))  # no call seen: not sequential
        traffic.begin(0.0)
        results.append(await runner.infer(rows, executor, traffic))  # one call, alone: the loop's thread
        many = np.arange(LOOP_MAX_ROWS + 1) % len(rows)
        results.append(await runner.infer(GraphRows(rows.sparse[many], rows.dense[many]), executor, traffic))
        traffic.begin(0.001)  # a second call in flight
        results.append(await runner.infer(rows, executor, traffic))
    # The run of more than LOOP_MAX_ROWS rows goes to the executor: it would block the loop for longer.
    assert [name == loop_thread for name in threads] == [False, False, True, False, False]
    assert all(name.startswith("ort") for name in threads[:2] + threads[3:])
    for logits in results[:3] + results[4:]:
        np.testing.assert_allclose(logits, data["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results[3], data["logits"][many], rtol=1e-4, atol=1e-5)


LOOP_RUNS = "mtrank_inference_loop_runs_total"


def _record_threads(running: Running) -> list[str]:
    """The names of the threads the server's ONNX Runtime runs take from now on, in order."""
    threads: list[str] = []
    for model in running.server.repository.snapshot.models.values():
        for runner in filter(None, (model.runner, model.factored)):
            _record(runner, threads)
    return threads


_REQUEST = ranking_pb2.RankRequest(user_id="u-1", candidate_ids=list(range(1000, 1010)))


async def _one_at_a_time(running: Running, calls: int) -> None:
    for _ in range(calls):  # each call sent 10 ms after the last one's answer, as from one sequential client
        await running.stub.Rank(_REQUEST)
        await asyncio.sleep(0.01)


async def test_a_call_that_arrived_during_a_run_on_the_loop_begins_before_that_call_ends(
    repository: Path,
) -> None:
    """Its task was ready while the run blocked the loop; it must see the run's call in flight (no streak) and
    send its own run to the executor, even when the clock says it came long after."""
    runner = OnnxRanker(str(repository / "tiny" / "1" / "model.onnx"), RuntimeSettings(), "t")
    threads: list[str] = []
    _record(runner, threads)
    data = golden(repository)
    rows = GraphRows(data["sparse"], data["dense"])
    traffic = SequentialTraffic(min_gap_s=0.001, streak=1)
    loop_thread = threading.current_thread().name

    async def call(begins: float) -> None:  # what the interceptor does around a call
        traffic.begin(begins)
        try:
            await runner.infer(rows, executor, traffic)
        finally:
            traffic.end(begins + 1.0)

    with ThreadPoolExecutor(2, thread_name_prefix="ort") as executor:
        first = asyncio.ensure_future(call(0.0))
        second = asyncio.ensure_future(call(10.0))  # queued behind the first: a call that arrived meanwhile
        await asyncio.gather(first, second)
    assert [name == loop_thread for name in threads] == [True, False]


async def test_the_server_runs_on_its_loop_between_sequential_calls_and_in_its_executor_under_load(
    repository: Path,
) -> None:
    source = MutableSource(FakeRouter())
    async for running in serving(repository, source, runtime=RuntimeSettings(lone_runs="loop")):
        threads = _record_threads(running)
        loop_thread = threading.current_thread().name  # the server shares the test's event loop
        before = REGISTRY.get_sample_value(LOOP_RUNS) or 0.0
        await _one_at_a_time(running, 4)
        assert [name == loop_thread for name in threads] == [False, True, True, True]  # after a streak of two
        assert REGISTRY.get_sample_value(LOOP_RUNS) == before + 3  # counted, so that dashboards can tell
        threads.clear()
        await asyncio.gather(*(running.stub.Rank(_REQUEST) for _ in range(16)))
        on_loop = sum(name == loop_thread for name in threads)
        # The burst's first call may still take the loop (the streak held when it began); the calls behind it
        # overlap or begin as it ends, so they go to the executor, as every run did before this rule.
        assert on_loop <= 2, threads
        await asyncio.sleep(0.01)
        await _one_at_a_time(running, 3)  # sequential again: back on the loop once a streak of two has begun
        assert [name == loop_thread for name in threads[-2:]] == [True, True]


async def test_by_default_every_run_stays_off_the_loop(running: Running) -> None:
    """--lone-runs executor, the default since lone runs are split (serving_peers.md, runs 93-95)."""
    assert RuntimeSettings().lone_runs == "executor"
    threads = _record_threads(running)
    await _one_at_a_time(running, 4)
    assert len(threads) == 4 and all(name.startswith("onnxruntime") for name in threads), threads
