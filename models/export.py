"""Export a trained ranking model to a model package (model.onnx + manifest + golden + item features).

The dict-input model is wrapped so the graph takes positional, named inputs ``sparse`` int64 ``[B, S]`` and
``dense`` float32 ``[B, D]`` with a dynamic batch axis and returns ``logits`` float32 ``[B, T]``
(torch-rechub's ONNXWrapper idea). The TorchScript-based exporter (``dynamo=False``) is the default: on
torch 2.13 it gives the same graph numerically as the dynamo exporter for every family here, about twenty
times faster; ``dynamo=True`` selects the torch.export path.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.base import MultiTaskModel, random_batch
from models.errors import PackageError
from models.factored import SideLayout, export_factored
from models.layers import FeatureSpec
from models.package import (
    GOLDEN_FILE,
    ITEM_FEATURES_FILE,
    ONNX_FILE,
    Manifest,
    TensorInfo,
    check_golden_parity,
    package_dir,
    staged_package,
    write_manifest,
)

logger = logging.getLogger(__name__)
OPSET = 17
GOLDEN_ROWS = 64


class OnnxRankingWrapper(nn.Module):
    """Positional ``(sparse, dense)`` in, ``logits`` out, for the exporter."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, sparse: Tensor, dense: Tensor) -> Tensor:
        logits = self.model({"sparse": sparse, "dense": dense})
        # An input without columns (a model of ids only) feeds nothing, and the exporter drops a graph input
        # that nothing reads, but the manifest and the ranker feed both: its empty sum adds an exact 0.
        spec = self.model.feature_spec
        for values, width in ((sparse, spec.n_sparse), (dense, spec.n_dense)):
            if width == 0:
                logits = logits + values.sum(dim=1, keepdim=True).to(logits.dtype)
        return logits


def export_onnx(model: MultiTaskModel, path: Path, opset: int = OPSET, dynamo: bool = False) -> None:
    """Write ``model`` (in eval mode) as an ONNX graph with a dynamic batch axis."""
    wrapper = OnnxRankingWrapper(model).eval()
    example = random_batch(model.feature_spec, 4)
    args = (example["sparse"], example["dense"])
    kwargs: dict[str, Any]
    if dynamo:
        batch = torch.export.Dim("batch")
        kwargs = {"dynamic_shapes": ({0: batch}, {0: batch})}
    else:
        kwargs = {"dynamic_axes": {"sparse": {0: "batch"}, "dense": {0: "batch"}, "logits": {0: "batch"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=["sparse", "dense"],
            output_names=["logits"],
            opset_version=opset,
            dynamo=dynamo,
            **kwargs,
        )
    model.eval()  # the exporter restores the wrapper's mode recursively; keep the model in eval


def golden_io(model: MultiTaskModel, rows: int = GOLDEN_ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    batch = random_batch(model.feature_spec, rows, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model.eval()(batch)
    return {"sparse": batch["sparse"].numpy(), "dense": batch["dense"].numpy(), "logits": logits.numpy()}


def export_package(
    model: MultiTaskModel,
    repository: Path | str,
    name: str,
    version: str,
    family: str,
    features: Mapping[str, Any] | None = None,
    training_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    item_features: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
    dynamo: bool = False,
) -> Path:
    """Write ``<repository>/<name>/<version>/`` and check its golden parity; returns the directory.

    The package is assembled in a folder of its own and renamed into place (``staged_package``): a failed
    export leaves nothing behind, and without ``overwrite`` an existing version is never replaced.
    """
    if features is not None:
        check_features(features, model.feature_spec)
    features = dict(features) if features is not None else default_features(model)
    items = None if item_features is None else check_item_features(item_features, features)
    with staged_package(repository, name, version, overwrite) as staging:
        trained = model.eval().cpu()
        model = trained.for_export().eval()
        export_onnx(model, staging / ONNX_FILE, dynamo=dynamo)
        # The trained model's answers, not the export form's: the parity check then also covers for_export
        # (a fold of pruning masks that changed the answers passed it when both sides were the folded model).
        golden = golden_io(trained)
        if not np.isfinite(golden["logits"]).all():  # a diverged model: the ranker would refuse it at load
            raise PackageError(f"{name}/{version}: the model answers NaN or infinity on the golden inputs")
        # allow_pickle is numpy's default, named so that no array name can stand in for it
        np.savez(staging / GOLDEN_FILE, allow_pickle=True, **golden)
        if items is not None:
            np.savez(staging / ITEM_FEATURES_FILE, allow_pickle=True, **items)
        spec = model.feature_spec
        export_factored(model, staging, SideLayout.from_features(features), OPSET)
        manifest = Manifest(
            kind="ranking",
            name=name,
            version=str(version),
            family=family,
            tasks=[{"name": t.name, "type": t.type} for t in model.tasks],
            inputs=[
                TensorInfo("sparse", "int64", [-1, spec.n_sparse]),
                TensorInfo("dense", "float32", [-1, spec.n_dense]),
            ],
            outputs=[TensorInfo("logits", "float32", [-1, model.n_tasks])],
            features=features,
            training_config=dict(training_config or {}),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
        )
        write_manifest(staging, manifest)
        check_golden_parity(staging, manifest)
    target = package_dir(repository, name, version)
    logger.info("exported %s to %s", family, target)
    return target


def check_features(features: Mapping[str, Any], spec: FeatureSpec) -> None:
    """The manifest's feature block must describe the graph's columns: the ranker builds request rows from it,
    and clamps an id at or above a column's ``vocab_size`` to 0 (out of vocabulary), so a vocabulary smaller than
    the model's would silently turn real ids into the unknown id. Each column needs a name and a side, user
    columns first (docs/contracts.md), or the ranker refuses the package when it loads it.

    Raises:
        PackageError: naming the column or count that differs.
    """
    if not isinstance(features, Mapping):
        raise PackageError(f"features: 'sparse' and 'dense' column lists, not {type(features).__name__}")
    sparse, dense = list(features.get("sparse", [])), list(features.get("dense", []))
    if (len(sparse), len(dense)) != (spec.n_sparse, spec.n_dense):
        raise PackageError(
            f"features list {len(sparse)} sparse / {len(dense)} dense columns, the model takes "
            f"{spec.n_sparse} / {spec.n_dense}"
        )
    for group, columns in (("sparse", sparse), ("dense", dense)):
        sides = [_column_side(f"features.{group}[{i}]", column) for i, column in enumerate(columns)]
        first_item = sides.index("item") if "item" in sides else len(sides)
        if "user" in sides[first_item:]:
            i = sides.index("user", first_item)
            raise PackageError(f"features.{group}[{i}]: a user-side column after an item-side one")
    for i, (column, vocab_size) in enumerate(zip(sparse, spec.sparse_vocab_sizes, strict=True)):
        if column.get("vocab_size") != vocab_size:
            raise PackageError(
                f"features.sparse[{i}] ({column.get('name')!r}): vocab_size {column.get('vocab_size')!r}, "
                f"the model's embedding has {vocab_size} rows"
            )


def _column_side(where: str, column: Any) -> str:
    """The side of one column of the feature block, which also needs a name."""
    if not isinstance(column, Mapping) or not isinstance(column.get("name"), str):
        raise PackageError(f"{where}: a column is a mapping with a 'name' string, got {column!r}")
    side = column.get("side")
    if side not in ("user", "item"):
        raise PackageError(f"{where} ({column['name']!r}): side must be 'user' or 'item', got {side!r}")
    return str(side)


def check_item_features(items: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``item_features.npz`` as the ranker reads it (docs/contracts.md): unique integer ``ids [N]``, integer
    ``sparse [N, S_item]`` and finite ``dense [N, D_item]`` for the item-side columns of ``features``, in its
    order (an array without columns may be left out). Returns the three arrays in the contract's dtypes.

    Raises:
        PackageError: naming the array that does not fit.
    """
    if "ids" not in items:
        raise PackageError(f"item_features: no 'ids' array, only {sorted(items)}")
    ids = np.asarray(items["ids"])
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise PackageError(f"item_features['ids']: integers [N] expected, got {ids.dtype} {list(ids.shape)}")
    if len(np.unique(ids)) != len(ids):
        raise PackageError("item_features['ids']: duplicate item ids")
    table = {"ids": ids.astype(np.int64)}
    for group, kinds, dtype in (("sparse", "iu", np.int64), ("dense", "iuf", np.float32)):
        width = sum(column["side"] == "item" for column in features.get(group, []))
        values = np.asarray(items.get(group, np.zeros((len(ids), 0), dtype)))
        if values.shape != (len(ids), width) or values.dtype.kind not in kinds:
            raise PackageError(
                f"item_features[{group!r}]: {np.dtype(dtype).name} [{len(ids)}, {width}] expected (a row per "
                f"id, a column per item-side {group} feature), got {values.dtype} {list(values.shape)}"
            )
        table[group] = values.astype(dtype)
    bad = ~np.isfinite(table["dense"]).all(axis=1)
    if bad.any():
        raise PackageError(f"item_features['dense']: NaN or infinite value in row {int(bad.argmax())}")
    return table


def default_features(model: MultiTaskModel) -> dict[str, Any]:
    """Feature block when the caller has no data-set metadata: every column on the user (request) side."""
    spec = model.feature_spec
    return {
        "sparse": [
            {"name": n, "vocab_size": v, "side": "user"}
            for n, v in zip(spec.sparse_names, spec.sparse_vocab_sizes, strict=True)
        ],
        "dense": [{"name": n, "side": "user"} for n in spec.dense_names],
    }
