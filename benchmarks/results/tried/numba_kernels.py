"""Rank's array steps around the ONNX Runtime run as numpy calls (the server's) against compiled numba kernels, each
timed right after a 500-row ORT run (serving_peers.md, "Compiled kernels for Rank's array steps").

The steps: the duplicate-id and finite-value checks of ``check_query``, the item-table rows
(``ItemTable.rows``, direct id -> row array), ``merge_scores`` and the top 100 (argsort, three ``take``). numpy
pays ~10-30 us per call on the caches ORT's run evicted; the kernels do the same in two compiled calls. bench_ranker's
MMoE, package graph, the lone-run session (two threads, spinning during runs); both paths alternate, 600 each.
numba is not a dependency of the project:

    .venv/bin/pip install --target /tmp/nbpkgs numba==0.68.1
    PYTHONPATH=/tmp/nbpkgs .venv/bin/python benchmarks/results/tried/numba_kernels.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks import bench_ranker as br  # noqa: E402
from ranker_server.dataplane import merge_scores  # noqa: E402
from ranker_server.features import ItemTable  # noqa: E402
from ranker_server.package import read_package  # noqa: E402

TOP_K = 100


@numba.njit(nogil=True)
def rows_kernel(ids: np.ndarray, user_dense: np.ndarray, row_of: np.ndarray) -> tuple[np.ndarray, int]:
    """Duplicate and finite checks, then each id's table row and the unknown-id count (-1: a check failed)."""
    ordered = np.sort(ids)
    for i in range(1, ordered.size):
        if ordered[i] == ordered[i - 1]:
            return np.empty(0, np.int64), -1
    for value in user_dense:
        if not np.isfinite(value):
            return np.empty(0, np.int64), -1
    last = row_of.size - 1
    rows = np.empty(ids.size, np.int64)
    unknown = 0
    for i in range(ids.size):
        rows[i] = row_of[ids[i]] if 0 <= ids[i] < last else row_of[last]
        unknown += rows[i] == row_of[last]
    return rows, unknown


@numba.njit(nogil=True)
def rank_kernel(
    logits: np.ndarray, binary: np.ndarray, weights: np.ndarray, k: int, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-task scores and their weighted sum, then the top k: what ``merge_scores`` and the top-k lines do."""
    n, tasks = logits.shape
    scores = np.empty((tasks, n), np.float32)
    merged = np.zeros(n, np.float32)
    for i in range(n):
        for j in range(tasks):
            x = logits[i, j]
            scores[j, i] = np.float32(1.0) / (np.float32(1.0) + np.exp(-x)) if binary[j] else x
            merged[i] += weights[j] * scores[j, i]
    order = np.argsort(-merged, kind="mergesort")[:k]
    top = np.empty((tasks, order.size), np.float32)
    for j in range(tasks):
        for r in range(order.size):
            top[j, r] = scores[j, order[r]]
    return top, merged[order], ids[order]


def main() -> None:
    package = br.write_package(br.build_model(), Path(tempfile.mkdtemp()))
    ids, sparse, dense = br.request_rows(package, 500, np.random.default_rng(0))
    ids = np.asarray(ids, np.int64)
    user_dense = np.random.default_rng(1).random(8).astype(np.float32)
    table = ItemTable(read_package(package))
    session = br.ort_session(package / "model.onnx", 2, "during runs")
    feeds = {"sparse": sparse, "dense": dense}
    logits = session.run(["logits"], feeds)[0]
    model = SimpleNamespace(task_names=("ctr", "cvr", "dwell"), binary_tasks=(True, True, True))
    weights = {"ctr": 1.0, "cvr": 0.5}
    binary, weight_row = np.array(model.binary_tasks), np.array([1.0, 0.5, 0.0], np.float32)

    def with_numpy() -> tuple[np.ndarray, ...]:
        ordered = np.sort(ids)
        assert not np.count_nonzero(ordered[1:] == ordered[:-1])
        assert np.count_nonzero(np.isfinite(user_dense)) == user_dense.size
        table.rows(ids)
        scores, merged = merge_scores(model, logits, weights)  # type: ignore[arg-type]
        order = np.argsort(-merged, kind="stable")[:TOP_K]
        return scores.take(order, axis=1), merged.take(order), ids.take(order)

    def with_numba() -> tuple[np.ndarray, ...]:
        _, unknown = rows_kernel(ids, user_dense, table._row_of)
        assert unknown >= 0
        return rank_kernel(logits, binary, weight_row, TOP_K, ids)

    for ours, theirs in zip(with_numpy(), with_numba(), strict=True):
        np.testing.assert_allclose(theirs, ours, rtol=1e-6)
    paths: dict[str, Callable[[], object]] = {
        "numpy (the server's calls)": with_numpy,
        "numba kernels": with_numba,
    }
    after_ort: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(600):
        for name, path in list(paths.items())[:: 1 if r % 2 else -1]:
            session.run(["logits"], feeds)
            started = time.perf_counter()
            path()
            after_ort[name].append(time.perf_counter() - started)
    print(br.uptime())
    for name, path in paths.items():
        started = time.perf_counter()
        for _ in range(200):
            path()
        hot = (time.perf_counter() - started) / 200
        print(
            f"{name:28s} after an ORT run p50 {np.median(after_ort[name]) * 1e6:6.1f} us, hot {hot * 1e6:5.1f} us"
        )


if __name__ == "__main__":
    main()
