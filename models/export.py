"""Export a trained ranking model to a model package (model.onnx + manifest + golden + item features).

The dict-input model is wrapped so the graph takes positional, named inputs ``sparse`` int64 ``[B, S]`` and
``dense`` float32 ``[B, D]`` with a dynamic batch axis and returns ``logits`` float32 ``[B, T]``
(torch-rechub's ONNXWrapper idea). The TorchScript-based exporter (``dynamo=False``) is the default: on
torch 2.13 it gives the same graph numerically as the dynamo exporter for every family here, about twenty
times faster; ``dynamo=True`` selects the torch.export path.
"""

from __future__ import annotations

import errno
import logging
import shutil
import uuid
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
        return self.model({"sparse": sparse, "dense": dense})


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

    The package is assembled in a sibling temporary folder and renamed into place, so a failed export never
    leaves a half-written version that a server could pick up. Each export has its own folder: two publishes
    of one version at once never mix their files, and without ``overwrite`` the later one fails.
    """
    for what, value in (("name", name), ("version", str(version))):
        if not value or value.startswith(".") or "/" in value or "\\" in value:
            raise PackageError(f"package {what} {value!r} must be one folder name (not empty, no '/', no leading '.')")
    if Path(repository).exists() and not Path(repository).is_dir():
        raise PackageError(f"model repository {repository} is a file, not a folder")
    target = package_dir(repository, name, version)
    if target.exists() and not overwrite:
        raise PackageError(f"{target} already exists (pass overwrite to replace it)")
    if features is not None:
        check_features(features, model.feature_spec)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.staging")
    staging.mkdir(parents=True)
    try:
        model = model.eval().cpu().for_export().eval()
        export_onnx(model, staging / ONNX_FILE, dynamo=dynamo)
        # allow_pickle is numpy's default, named so that no array name can stand in for it
        np.savez(staging / GOLDEN_FILE, allow_pickle=True, **golden_io(model))
        if item_features is not None:
            arrays = {k: np.asarray(v) for k, v in item_features.items()}
            np.savez(staging / ITEM_FEATURES_FILE, allow_pickle=True, **arrays)
        spec = model.feature_spec
        features = dict(features) if features is not None else default_features(model)
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
        if overwrite and target.exists():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # a non-empty folder is in the way: another publish of this version finished first
            raise PackageError(f"{target} already exists: another export of it finished first") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("exported %s to %s", family, target)
    return target


def check_features(features: Mapping[str, Any], spec: FeatureSpec) -> None:
    """The manifest's feature block must describe the graph's columns: the ranker builds request rows from it,
    and clamps an id at or above a column's ``vocab_size`` to 0 (out of vocabulary), so a vocabulary smaller than
    the model's would silently turn real ids into the unknown id.

    Raises:
        PackageError: naming the column or count that differs.
    """
    sparse, dense = list(features.get("sparse", [])), list(features.get("dense", []))
    if (len(sparse), len(dense)) != (spec.n_sparse, spec.n_dense):
        raise PackageError(
            f"features list {len(sparse)} sparse / {len(dense)} dense columns, the model takes "
            f"{spec.n_sparse} / {spec.n_dense}"
        )
    for i, (column, vocab_size) in enumerate(zip(sparse, spec.sparse_vocab_sizes, strict=True)):
        if column.get("vocab_size") != vocab_size:
            raise PackageError(
                f"features.sparse[{i}] ({column.get('name')!r}): vocab_size {column.get('vocab_size')!r}, "
                f"the model's embedding has {vocab_size} rows"
            )


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
