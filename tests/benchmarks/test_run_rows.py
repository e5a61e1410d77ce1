"""bench_ranker.run_rows / run_halves: raw ORT on a request's rows, in one run, in sequential runs of at
most N rows, or as two halves at once."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_ranker as br  # noqa: E402
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


def test_two_halves_at_once_answer_as_one_run(tmp_path: Path) -> None:
    package = br.write_package(br.build_model(), tmp_path)
    _, sparse, dense = br.request_rows(package, 41, np.random.default_rng(2))  # odd: halves of 21 and 20
    rows = {"sparse": sparse, "dense": dense}
    session = br.ort_session(package / "model.onnx", 1, "off")
    first, second = br.split_feeds(rows)
    assert (len(first["sparse"]), len(second["dense"])) == (21, 20)
    with ThreadPoolExecutor(1) as helper:
        halves = br.run_halves(session, rows, helper)
    np.testing.assert_allclose(halves, session.run(["logits"], rows)[0], rtol=1e-5, atol=1e-6)
    factored = {"rows": np.arange(5), "segment": np.zeros(5, np.int64), "user_dense": np.ones((1, 3))}
    first, second = br.split_feeds(factored)  # the user's row goes to both halves
    assert first["rows"].tolist() == [0, 1, 2] and second["segment"].tolist() == [0, 0]
    assert first["user_dense"] is second["user_dense"] is factored["user_dense"]
