"""A real model repository for the server tests: two tiny SSMTL versions trained on a synthetic graph.

Fan-outs are large relative to the degrees so that sampling keeps every neighbour, which makes the on-the-fly
embedding of a "new" user comparable to the index embedding of the same node.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

TINY = {"hidden_dim": 16, "embed_dim": 8, "heads": 2, "fanouts": (8, 8), "ssl_nodes": 16}
NUM_NODES = 200


@pytest.fixture(scope="session")
def built_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ssmtl/1`` (SSMTL loss) and ``ssmtl/2`` and ``baseline/1`` (retrieval only), built once per session."""
    import torch

    from models.graph.datasets import synthetic_graph
    from models.graph.export import write_package
    from models.graph.training import TrainConfig, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("repository")
    graph = synthetic_graph(num_nodes=NUM_NODES, num_features=16, num_communities=5, mean_degree=3, seed=2)
    for name, version, seed, extra in (("ssmtl", "1", 0, {}), ("ssmtl", "2", 1, {}),
                                       ("baseline", "1", 0, {"beta": 0.0, "gamma": 0.0})):
        config = TrainConfig(dataset="synthetic", seed=seed, steps=8, batch_size=32, eval_every=8,
                             model={**TINY, **extra})
        write_package(train(config, graph=graph, progress=False), root, name, version)
    return root


@pytest.fixture
def repository_root(built_repository: Path, tmp_path: Path) -> Path:
    """A private copy per test, so tests may tamper with or rewrite packages."""
    root = tmp_path / "repo"
    shutil.copytree(built_repository, root)
    return root


def republish(root: Path, name: str, version: str, source: str) -> None:
    """Publish ``name/source``'s files as ``name/version`` over it (``export --overwrite``: one swap)."""
    from models.package import read_manifest, staged_package, write_manifest

    with staged_package(root, name, version, overwrite=True) as staging:
        shutil.copytree(root / name / source, staging, dirs_exist_ok=True)
        manifest = read_manifest(staging)
        manifest.version = version
        write_manifest(staging, manifest)


def graph_arrays(root: Path, name: str = "ssmtl", version: str = "1") -> dict[str, np.ndarray]:
    with np.load(root / name / version / "index" / "graph.npz") as data:
        return {k: data[k] for k in data.files}
