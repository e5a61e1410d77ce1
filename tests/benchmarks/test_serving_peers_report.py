"""bench_serving_peers' report: concurrency 1 by the call's place in its round."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_ranker as br  # noqa: E402
from bench_serving_peers import by_position  # noqa: E402


def test_each_place_in_the_round_gets_its_own_median() -> None:
    result = br.Result("a server")
    result.latencies_s = [0.005, 0.001, 0.002] * 3 + [0.009, 0.001, 0.002]  # four rounds of three calls, in order
    lines = by_position({"a server": {1: result}}, 3)
    assert lines[-2:] == ["|---|---:|---:|---:|", "| a server | 5.000 | 1.000 | 2.000 |"]
