"""The factored graph in the ranker: item parts computed at load, the same answers as the package graph, checked
at load, capped in memory, and used only for Rank candidates whose features all come from the item table."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from models.package import read_manifest, write_manifest
from proto import ranking_pb2
from ranker_server.config import BatchingSettings, RuntimeSettings
from ranker_server.errors import PackageError
from ranker_server.features import build_rows, user_item_rows
from ranker_server.inference import GraphRows, ModelInput
from ranker_server.model_repository import LoadedModel, load_model
from ranker_server.package import FACTORED_RANK
from tests.ranker_server.conftest import Running
from tests.ranker_server.rank_packages import build_package

NO_INTS, NO_FLOATS = np.zeros(0, np.int64), np.zeros(0, np.float32)


def load(path: Path, **runtime: object) -> LoadedModel:
    with ThreadPoolExecutor(1) as pool:
        return load_model(path, RuntimeSettings(**runtime), BatchingSettings(), pool)


@pytest.mark.parametrize(
    ("user_sparse", "user_dense"),
    [
        (np.array([3, 4]), np.array([0.25], np.float32)),
        (np.array([-7, 999]), NO_FLOATS),
        (NO_INTS, NO_FLOATS),
    ],
)
def test_factored_answers_equal_the_package_graph(
    tmp_path: Path, user_sparse: np.ndarray, user_dense: np.ndarray
) -> None:
    model = load(build_package(tmp_path, seed=2))
    assert model.factored is not None
    ids = np.array([1000, 1079, 5, -1, 1040, 2**62], np.int64)  # known, unknown, negative, huge
    inputs, oov = user_item_rows(model.package.layout, model.table, ids, user_sparse, user_dense)
    full = build_rows(model.package.layout, model.table, ids, user_sparse, user_dense, NO_INTS, NO_FLOATS)
    assert oov == full.oov == 3
    for alone in model.factored.alone_values:
        np.testing.assert_allclose(
            model.factored.run(inputs, alone), model.runner.run(GraphRows(full.sparse, full.dense)), atol=1e-5
        )


def test_item_parts_over_the_limit_leave_rank_on_the_package_graph(tmp_path: Path) -> None:
    path = build_package(tmp_path, seed=2)
    assert load(path, factored_max_mb=0).factored is None
    assert load(path, factored_max_mb=1).factored is not None  # 81 rows of a tiny MMoE: far below 1 MB


def test_a_factored_graph_that_disagrees_with_the_package_graph_is_refused(tmp_path: Path) -> None:
    """Checksums cannot tell a rank graph from another version's: the load-time check against the package
    graph does."""
    path = build_package(tmp_path, "m", "1", seed=0)
    other = build_package(tmp_path, "m", "2", seed=1)
    shutil.copy(other / FACTORED_RANK, path / FACTORED_RANK)
    write_manifest(path, read_manifest(path))
    with pytest.raises(PackageError, match="factored graph"):
        load(path)


@pytest.mark.integration
async def test_rank_uses_the_factored_graph_unless_candidates_bring_features(running: Running) -> None:
    seen: list[tuple[str, str]] = []
    for model in running.server.repository.snapshot.models.values():
        for graph, runner in (("package", model.runner), ("factored", model.factored)):
            assert runner is not None
            infer = runner.infer

            async def spy(inputs: ModelInput, *args: object, infer=infer, graph=graph) -> np.ndarray:
                seen.append((type(inputs).__name__, graph))
                return await infer(inputs, *args)

            runner.infer = spy  # type: ignore[method-assign]
    ids = list(range(1000, 1010))
    plain = await running.stub.Rank(ranking_pb2.RankRequest(user_id="u-1", candidate_ids=ids))
    assert seen == [("UserItemRows", "factored")] and len(plain.candidate_ids) == 10
    seen.clear()
    featured = ranking_pb2.RankRequest(
        user_id="u-1",
        candidate_ids=ids,
        candidate_sparse=[i % 100 for i in ids],
        candidate_dense=[0.5] * 20,
    )
    assert len((await running.stub.Rank(featured)).candidate_ids) == 10
    assert seen == [("GraphRows", "package")]
