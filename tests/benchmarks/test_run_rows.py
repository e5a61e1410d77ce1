"""bench_ranker.run_rows: raw ORT on a request's rows, in one run or in sequential runs of at most N rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_ranker import run_rows  # noqa: E402


class RecordingSession:
    def __init__(self) -> None:
        self.runs: list[dict[str, np.ndarray]] = []

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        assert outputs == ["logits"]
        self.runs.append(feeds)
        return [np.zeros((len(feeds["sparse"]), 3), np.float32)]


def feeds(n: int) -> dict[str, np.ndarray]:
    return {"sparse": np.arange(n * 4).reshape(n, 4), "dense": np.arange(n * 8, dtype=np.float32).reshape(n, 8)}


def test_every_row_once_in_order_in_runs_of_at_most_the_limit() -> None:
    session, rows = RecordingSession(), feeds(500)
    run_rows(session, rows, 128)
    assert [len(run["sparse"]) for run in session.runs] == [128, 128, 128, 116]
    for name in ("sparse", "dense"):
        assert np.array_equal(np.concatenate([run[name] for run in session.runs]), rows[name])


def test_no_limit_is_one_run_of_all_rows() -> None:
    session = RecordingSession()
    run_rows(session, feeds(500))
    assert [len(run["sparse"]) for run in session.runs] == [500]
