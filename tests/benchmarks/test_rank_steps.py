"""bench_rank_steps drives the server's own request-path functions: it must keep up with their signatures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_ranker as br  # noqa: E402
from bench_rank_steps import STEPS, measure  # noqa: E402


def test_every_step_runs_on_the_benchmark_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = br.write_package(br.build_model(), tmp_path)
    ids, _, _ = br.request_rows(package, 500, np.random.default_rng(1))
    np.save(package / "ids.npy", ids)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # measure() checks it times this checkout's code
    micros = measure(package, repeats=3)
    assert set(micros) == set(STEPS) and all(0 < value < 1e6 for value in micros.values())
