"""bench_ranker's concurrency rounds: the callers, and how they spread over client connections."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_ranker import Result, server_round  # noqa: E402


def test_callers_spread_over_the_connections_and_every_call_is_timed() -> None:
    in_flight = {"a": 0, "b": 0, "c": 0}
    most = dict.fromkeys(in_flight, 0)
    served = dict.fromkeys(in_flight, 0)

    def connection(name: str):
        async def call(request: str, timeout: float) -> str:
            in_flight[name] += 1
            most[name] = max(most[name], in_flight[name])
            await asyncio.sleep(0.001)
            in_flight[name] -= 1
            served[name] += 1
            return request

        return call

    result = Result("round")
    asyncio.run(server_round([connection(n) for n in in_flight], "request", result, 7, 70))
    assert len(result.latencies_s) == sum(served.values()) == 70
    assert result.wall_s > 0
    # Callers 0, 3, 6 on "a", 1 and 4 on "b", 2 and 5 on "c": each connection has its callers' calls in flight at once.
    assert most == {"a": 3, "b": 2, "c": 2}


def test_a_sustained_round_keeps_every_caller_calling_until_the_time_is_up() -> None:
    started: list[float] = []

    async def call(request: str, timeout: float) -> str:
        started.append(time.perf_counter())
        await asyncio.sleep(0.002)
        return request

    result = Result("sustained")
    begin = time.perf_counter()
    asyncio.run(server_round([call], "request", result, 4, 0, seconds=0.1))
    assert len(result.latencies_s) == len(started) > 4  # n=0 ignored: each caller called several times
    assert max(started) - begin >= 0.09  # still calling near the end
    assert all(t - begin < 0.1 + 0.05 for t in started)  # none begun after the time (slack for a slow loop)
