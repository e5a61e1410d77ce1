"""One 500-row ONNX Runtime run against the same rows in sequential runs of fewer rows, in-process on a quiet machine
(serving_peers.md, "Cache-sized batches", first measured on the loaded machine).

Fewer rows per run keep each layer's activations (2 MB for the experts' first layer at 500 rows) inside one core's
1 MB L2; the question is whether that beats the per-run overhead. bench_ranker's MMoE, package graph, both session
set-ups the ranker uses (two spinning threads for lone runs, one sleeping thread for batches); 150 interleaved
repeats after 20 warm-up runs each.

    .venv/bin/python benchmarks/results/tried/chunked_runs.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks import bench_ranker as br  # noqa: E402

CHUNKS = (500, 250, 125, 64)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        package = br.write_package(br.build_model(), Path(tmp))
        _, sparse, dense = br.request_rows(package, 500, np.random.default_rng(1))
        feeds = {"sparse": sparse, "dense": dense}
        for threads, spinning in ((2, "during runs"), (1, "off")):
            session = br.ort_session(package / "model.onnx", threads, spinning)
            times: dict[int, list[float]] = {rows: [] for rows in CHUNKS}
            for rows in CHUNKS:
                for _ in range(20):
                    br.run_rows(session, feeds, rows)
            for _ in range(150):
                for rows in CHUNKS:
                    started = time.perf_counter()
                    br.run_rows(session, feeds, rows)
                    times[rows].append(time.perf_counter() - started)
            medians = ", ".join(f"{rows} rows/run {np.median(times[rows]) * 1e3:.3f} ms" for rows in CHUNKS)
            print(f"intra_op={threads}, spinning {spinning}: {medians}")


if __name__ == "__main__":
    main()
