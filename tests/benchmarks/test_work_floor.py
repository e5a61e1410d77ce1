"""Rank's work floor (bench_ranker's bare servicer with ``work``) must do the work it stands for."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_ranker as br  # noqa: E402
from bench_serving_peers import check_work_floor  # noqa: E402


@pytest.mark.parametrize(
    ("server", "factored", "halves"),
    [
        ("aio", False, False),
        ("threads", False, False),
        ("aio", True, False),
        ("aio", False, True),
        ("aio", True, True),
    ],
)
def test_the_work_floor_answers_the_control_variants_top_100(
    tmp_path: Path, server: str, factored: bool, halves: bool
) -> None:
    package = br.write_package(br.build_model(), tmp_path)
    ids, sparse, dense = br.request_rows(package, 500, np.random.default_rng(1))
    np.savez(package / "floor_request.npz", ids=ids, sparse=sparse, dense=dense)
    logits = br.ort_session(package / "model.onnx", 1, "off").run(["logits"], {"sparse": sparse, "dense": dense})[0]
    proc, target = br.start_floor(
        package, 2, inline=False, work=True, server=server, factored=factored, halves=halves
    )
    try:
        check_work_floor(target, br.rank_request(ids), ids, logits)  # its rows come from the item table
        with pytest.raises(AssertionError, match="ranks differently"):  # and the check can fail
            check_work_floor(target, br.rank_request(ids), ids, -logits)
    finally:
        proc.kill()
