"""Export a trained retrieval encoder as a model package and embed every node into its index.

Package layout (docs/contracts.md, kind "retrieval")::

    <repository>/<name>/<version>/
        model.onnx       user encoder: node_features [B,F], hop1_features [B,f1,F], hop2_features [B,f1*f2,F],
                         hop1_mask [B,f1], hop2_mask [B,f1*f2] -> embedding [B,E] (L2-normalised)
        golden.npz       golden inputs (ONNX input names) and output "embedding"
        index/graph.npz  what the server needs to embed a user on the fly: ids int64[N] (external node ids),
                         indptr/indices (CSR over node positions, the graph the index was embedded on) and
                         features float32[N,F]
        index/embeddings.npy  float32[N,E], row i = node ids[i], computed by ``build_index`` with ONNX Runtime
        manifest.json    format_version 1, kind "retrieval", sha256 of model.onnx and of every other file
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.errors import PackageError
from models.graph.sampling import Neighbourhood, NeighbourSampler
from models.graph.training import INDEX_SAMPLING_SEED, TrainResult
from models.package import (
    MANIFEST,
    Manifest,
    TensorInfo,
    check_golden_parity,
    package_dir,
    read_manifest,
    restaged_package,
    staged_package,
    write_manifest,
)
from models.ssmtl import INPUT_NAMES, SSMTL

logger = logging.getLogger(__name__)


class _PositionalEncoder(nn.Module):
    """The dict-input model as a positional-input module, which is what the ONNX exporter traces."""

    def __init__(self, model: SSMTL) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(INPUT_NAMES, inputs, strict=True)))


def onnx_inputs(nb: Neighbourhood, features: np.ndarray) -> dict[str, np.ndarray]:
    """The encoder's ONNX inputs for sampled neighbourhoods over a feature matrix."""
    return {
        "node_features": features[nb.nodes],
        "hop1_features": features[nb.hop1],
        "hop2_features": features[nb.hop2],
        "hop1_mask": nb.hop1_mask.astype(np.float32),
        "hop2_mask": nb.hop2_mask.astype(np.float32),
    }


def export_onnx(model: SSMTL, path: str | Path, example: dict[str, np.ndarray]) -> None:
    """Export the user encoder with a dynamic batch axis (opset 17)."""
    # The wrapper must be in eval mode too: the exporter restores the wrapper's mode recursively afterwards.
    wrapper = _PositionalEncoder(model).eval()
    args = tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES)
    torch.onnx.export(
        wrapper,
        args,
        str(path),
        input_names=list(INPUT_NAMES),
        output_names=["embedding"],
        dynamic_axes={name: {0: "batch"} for name in [*INPUT_NAMES, "embedding"]},
        opset_version=17,
        dynamo=False,
    )


def _tensor_specs(model: SSMTL) -> tuple[list[TensorInfo], list[TensorInfo]]:
    c = model.config
    f1, f2 = c.fanouts
    width = c.num_features
    inputs = [
        TensorInfo("node_features", "float32", [-1, width]),
        TensorInfo("hop1_features", "float32", [-1, f1, width]),
        TensorInfo("hop2_features", "float32", [-1, f1 * f2, width]),
        TensorInfo("hop1_mask", "float32", [-1, f1]),
        TensorInfo("hop2_mask", "float32", [-1, f1 * f2]),
    ]
    return inputs, [TensorInfo("embedding", "float32", [-1, c.embed_dim])]


def write_package(
    result: TrainResult,
    repository: str | Path,
    name: str,
    version: str,
    metrics: dict[str, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export ONNX + golden + graph store, check the graph against the golden outputs under ONNX Runtime
    (``PARITY_ATOL``/``PARITY_RTOL``), build the index, write the manifest; returns the package folder.

    The package is assembled apart and renamed into place (``staged_package``), as ranking packages are: the
    index build takes a while, and a version already there is replaced only with ``overwrite``.
    """
    with staged_package(repository, name, version, overwrite) as staging:
        _write_into(staging, result, name, version, metrics)
    return package_dir(repository, name, version)


def _write_into(
    package: Path, result: TrainResult, name: str, version: str, metrics: dict[str, float] | None
) -> None:
    """Every file of the package, written into the folder ``package`` (the staging one)."""
    (package / "index").mkdir()
    features = result.graph.features.astype(np.float32)
    rng = np.random.default_rng(INDEX_SAMPLING_SEED)
    golden_nb = result.sampler.sample(np.arange(min(8, result.graph.num_nodes)), rng)
    golden = onnx_inputs(golden_nb, features)
    export_onnx(result.model, package / "model.onnx", golden)
    with torch.no_grad():
        golden["embedding"] = result.model({k: torch.from_numpy(v) for k, v in golden.items()}).numpy()
    # allow_pickle is numpy's default, named so that no array name can stand in for it
    np.savez(package / "golden.npz", allow_pickle=True, **golden)
    np.savez_compressed(
        package / "index" / "graph.npz",
        ids=result.graph.node_ids.astype(np.int64),
        indptr=result.sampler.indptr,
        indices=result.sampler.indices,
        features=features,
    )
    inputs, outputs = _tensor_specs(result.model)
    manifest = Manifest(
        kind="retrieval",
        name=name,
        version=str(version),
        family="ssmtl",
        inputs=inputs,
        outputs=outputs,
        training_config={
            **result.config.model_dump(),
            "model": result.model.training_config(),
            "fanouts": list(result.model.config.fanouts),
            "index_sampling_seed": INDEX_SAMPLING_SEED,
        },
        metrics=metrics or {},
    )
    # the index is embedded with this graph: it must answer as the trained encoder does (nothing checked it)
    check_golden_parity(package, manifest)
    _write_index(package, manifest)


def build_index(package: str | Path, chunk: int = 256, progress: bool = False) -> np.ndarray:
    """Batch job: embed every node of ``index/graph.npz`` with the package's ONNX encoder (ONNX Runtime) and
    write ``index/embeddings.npy``; refreshes the manifest checksums. Returns the embeddings.

    The new index and manifest are written into a copy of the package that replaces it in one step
    (``restaged_package``): written in place, a server (re)loading the version meanwhile met a half-written
    index, and a job killed (or a disk filled) half-way left the served version unloadable.
    """
    package = Path(package)
    manifest = read_manifest(package)
    if manifest.kind != "retrieval":  # a ranking package ended `index` in KeyError: 'fanouts'
        raise PackageError(
            f"{package / MANIFEST}: kind is {manifest.kind!r}; only retrieval packages have an index"
        )
    with restaged_package(package) as staging:  # its manifest: the one of the files copied
        return _write_index(staging, read_manifest(staging), chunk, progress)


def _write_index(package: Path, manifest: Manifest, chunk: int = 256, progress: bool = False) -> np.ndarray:
    """Embed every node into ``package``'s ``index/embeddings.npy`` and write its manifest; returns the
    embeddings."""
    import onnxruntime as ort

    fanouts = tuple(manifest.training_config["fanouts"])
    store = np.load(package / "index" / "graph.npz")
    features = store["features"]
    sampler = NeighbourSampler.from_csr(store["indptr"], store["indices"], fanouts)
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(manifest.training_config.get("index_sampling_seed", INDEX_SAMPLING_SEED))
    everyone = sampler.sample(np.arange(sampler.num_nodes, dtype=np.int64), rng)
    parts = []
    for start in tqdm(range(0, sampler.num_nodes, chunk), desc="index", disable=not progress):
        feeds = onnx_inputs(everyone.rows(start, start + chunk), features)
        parts.append(session.run(["embedding"], feeds)[0])
    embeddings = np.concatenate(parts).astype(np.float32)
    target = package / "index" / "embeddings.npy"
    target.unlink(missing_ok=True)  # a hard link to the served package's file (restaged_package)
    np.save(target, embeddings)
    write_manifest(package, manifest)
    logger.info("indexed %d nodes into %s", len(embeddings), package / "index")
    return embeddings
