"""Builds small ranking model packages (docs/contracts.md layout) with torch, for the ranker's tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

USER_VOCABS = (50, 20)
ITEM_VOCABS = (100,)
USER_DENSE = 1
ITEM_DENSE = 2
TASKS = ({"name": "click", "type": "binary"}, {"name": "watch", "type": "regression"})
N_ITEMS = 80  # item ids 1000..1079 are in the table


class TinyMultiTask(nn.Module):
    """Shared-bottom two-task ranker: embeddings + dense -> MLP -> one head per task."""

    def __init__(self, vocabs: tuple[int, ...], dense: int, tasks: int, hidden: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embeddings = nn.ModuleList(nn.Embedding(v, 8) for v in vocabs)
        self.bottom = nn.Sequential(nn.Linear(8 * len(vocabs) + dense, hidden), nn.ReLU())
        self.heads = nn.Linear(hidden, tasks)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        emb = [e(sparse[:, i]) for i, e in enumerate(self.embeddings)]
        return self.heads(self.bottom(torch.cat([*emb, dense], dim=1)))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_package(
    root: Path,
    name: str = "tiny",
    version: str = "1",
    seed: int = 0,
    hidden: int = 16,
    corrupt_golden: bool = False,
) -> Path:
    """Write ``root/name/version/`` and return its path; ``seed`` changes the weights (a new version)."""
    path = root / name / version
    path.mkdir(parents=True, exist_ok=True)
    vocabs = USER_VOCABS + ITEM_VOCABS
    model = TinyMultiTask(vocabs, USER_DENSE + ITEM_DENSE, len(TASKS), hidden, seed).eval()
    rng = np.random.default_rng(seed)
    b = 32
    sparse = np.stack([rng.integers(0, v, b) for v in vocabs], axis=1).astype(np.int64)
    dense = rng.normal(size=(b, USER_DENSE + ITEM_DENSE)).astype(np.float32)
    torch.onnx.export(
        model,
        (torch.from_numpy(sparse), torch.from_numpy(dense)),
        str(path / "model.onnx"),
        input_names=["sparse", "dense"],
        output_names=["logits"],
        dynamic_axes={"sparse": {0: "batch"}, "dense": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    with torch.no_grad():
        logits = model(torch.from_numpy(sparse), torch.from_numpy(dense)).numpy()
    if corrupt_golden:
        logits = logits + 1.0
    np.savez(path / "golden.npz", sparse=sparse, dense=dense, logits=logits)
    ids = np.arange(1000, 1000 + N_ITEMS, dtype=np.int64)
    np.savez(
        path / "item_features.npz",
        ids=ids,
        sparse=(ids % ITEM_VOCABS[0]).reshape(-1, 1).astype(np.int64),
        dense=rng.normal(size=(N_ITEMS, ITEM_DENSE)).astype(np.float32),
    )
    manifest = {
        "format_version": 1,
        "kind": "ranking",
        "name": name,
        "version": version,
        "family": "tiny",
        "tasks": list(TASKS),
        "inputs": [
            {"name": "sparse", "dtype": "int64", "shape": [-1, len(vocabs)]},
            {"name": "dense", "dtype": "float32", "shape": [-1, USER_DENSE + ITEM_DENSE]},
        ],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, len(TASKS)]}],
        "features": {
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
        },
        "onnx_sha256": _sha(path / "model.onnx"),
        "files": {f: _sha(path / f) for f in ("golden.npz", "item_features.npz")},
        "training_config": {"seed": seed, "hidden": hidden},
        "metrics": {},
        "created_at": "2026-11-23T00:00:00Z",
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path
