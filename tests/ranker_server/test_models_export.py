"""A package written by the models package's own exporter loads and serves (the cross-package contract)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from models import create_model
from models.export import export_package
from models.layers import FeatureSpec
from ranker_server.config import BatchingSettings, RuntimeSettings
from ranker_server.features import build_rows, user_item_rows
from ranker_server.inference import GraphRows
from ranker_server.model_repository import load_model


def test_exported_mmoe_package_loads_and_scores(tmp_path: Path) -> None:
    spec = FeatureSpec(sparse_vocab_sizes=(30, 40), n_dense=2, sparse_names=("user_id", "item_id"))
    tasks = [{"name": "click", "type": "binary"}, {"name": "rating", "type": "regression"}]
    model = create_model("mmoe", features=spec, tasks=tasks, preset="tiny")
    features = {
        "sparse": [
            {"name": "user_id", "vocab_size": 30, "side": "user"},
            {"name": "item_id", "vocab_size": 40, "side": "item"},
        ],
        "dense": [{"name": "dense_0", "side": "user"}, {"name": "dense_1", "side": "item"}],
    }
    ids = np.arange(100, 110, dtype=np.int64)
    items = {"ids": ids, "sparse": (ids % 40).reshape(-1, 1), "dense": np.ones((10, 1), np.float32)}
    path = export_package(model, tmp_path, "mmoe", "1", "mmoe", features=features, item_features=items)
    with ThreadPoolExecutor(1) as pool:
        loaded = load_model(path, RuntimeSettings(), BatchingSettings(), pool)
    assert loaded.task_names == ("click", "rating")
    rows = build_rows(
        loaded.package.layout,
        loaded.table,
        np.array([100, 105, 999], np.int64),
        np.array([7], np.int64),
        np.array([0.5], np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.float32),
    )
    assert rows.oov == 1 and rows.sparse[:, 1].tolist() == [100 % 40, 105 % 40, 0]
    logits = loaded.runner.run(GraphRows(rows.sparse, rows.dense))
    assert logits.shape == (3, 2) and np.isfinite(logits).all()


def test_an_exported_model_of_ids_only_loads_and_scores_through_both_graphs(tmp_path: Path) -> None:
    """A model without dense columns could not be exported: its graph lost the ``dense`` input the ranker
    feeds."""
    spec = FeatureSpec(sparse_vocab_sizes=(30, 40), n_dense=0, sparse_names=("user_id", "item_id"))
    model = create_model("mmoe", features=spec, tasks=[{"name": "click"}], preset="tiny")
    features = {
        "sparse": [
            {"name": "user_id", "vocab_size": 30, "side": "user"},
            {"name": "item_id", "vocab_size": 40, "side": "item"},
        ],
        "dense": [],
    }
    ids = np.arange(100, 110, dtype=np.int64)
    items = {"ids": ids, "sparse": (ids % 40).reshape(-1, 1)}
    path = export_package(model, tmp_path, "ids", "1", "mmoe", features=features, item_features=items)
    with ThreadPoolExecutor(1) as pool:
        loaded = load_model(path, RuntimeSettings(), BatchingSettings(), pool)
    assert loaded.factored is not None
    layout, candidates, user_sparse = loaded.package.layout, np.array([100, 105, 999]), np.array([7])
    no_ids, no_dense = np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows = build_rows(layout, loaded.table, candidates, user_sparse, no_dense, no_ids, no_dense)
    full = loaded.runner.run(GraphRows(rows.sparse, rows.dense))
    inputs, _ = user_item_rows(layout, loaded.table, candidates, user_sparse, no_dense)
    np.testing.assert_allclose(loaded.factored.run(inputs), full, atol=1e-5)
    assert full.shape == (3, 1) and np.isfinite(full).all()
