"""Builds small ranking model packages for the ranker's tests with the models package's own exporter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models import create_model
from models.export import export_package
from models.layers import FeatureSpec
from models.package import GOLDEN_FILE, read_manifest, write_manifest

USER_VOCABS = (50, 20)
ITEM_VOCABS = (100,)
USER_DENSE = 1
ITEM_DENSE = 2
TASKS = ({"name": "click", "type": "binary"}, {"name": "watch", "type": "regression"})
N_ITEMS = 80  # item ids 1000..1079 are in the table
FEATURES = {
    "sparse": [
        {"name": "user_id", "vocab_size": USER_VOCABS[0], "side": "user"},
        {"name": "user_segment", "vocab_size": USER_VOCABS[1], "side": "user"},
        {"name": "item_id", "vocab_size": ITEM_VOCABS[0], "side": "item"},
    ],
    "dense": [
        {"name": "user_age", "side": "user"},
        {"name": "item_price", "side": "item"},
        {"name": "item_ctr", "side": "item"},
    ],
}


def build_package(
    root: Path, name: str = "tiny", version: str = "1", seed: int = 0, corrupt_golden: bool = False
) -> Path:
    """Export a tiny MMoE as ``root/name/version/``; ``seed`` changes the weights (a new version).

    ``corrupt_golden`` shifts the stored golden logits and re-signs the manifest: a package whose
    checksums are fine but whose outputs do not match, which the server must refuse.
    """
    spec = FeatureSpec(
        sparse_vocab_sizes=USER_VOCABS + ITEM_VOCABS,
        n_dense=USER_DENSE + ITEM_DENSE,
        sparse_names=tuple(f["name"] for f in FEATURES["sparse"]),
        dense_names=tuple(f["name"] for f in FEATURES["dense"]),
    )
    torch.manual_seed(seed)
    model = create_model("mmoe", features=spec, tasks=list(TASKS), preset="tiny")
    rng = np.random.default_rng(seed)
    ids = np.arange(1000, 1000 + N_ITEMS, dtype=np.int64)
    items = {
        "ids": ids,
        "sparse": (ids % ITEM_VOCABS[0]).reshape(-1, 1),
        "dense": rng.normal(size=(N_ITEMS, ITEM_DENSE)).astype(np.float32),
    }
    path = export_package(
        model,
        root,
        name,
        version,
        "mmoe",
        features=FEATURES,
        training_config={"seed": seed},
        item_features=items,
        overwrite=True,
    )
    if corrupt_golden:
        golden = dict(np.load(path / GOLDEN_FILE))
        golden["logits"] = golden["logits"] + 1.0
        np.savez(path / GOLDEN_FILE, **golden)
        write_manifest(path, read_manifest(path))
    return path
