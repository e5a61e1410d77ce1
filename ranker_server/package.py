"""Reads and verifies a ranking model package (layout and manifest in docs/contracts.md).

``models.package`` owns the manifest's writer; the server reads the fields it needs with its own small model
because importing ``models`` pulls in torch, which serving must never load.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ranker_server.errors import PackageError

# models.factored writes these (checksummed in the manifest's ``files`` like every other file).
FACTORED_ITEMS = "factored/items.onnx"
FACTORED_RANK = "factored/rank.onnx"


class _Lenient(BaseModel):
    # The models package owns the schema and may add keys; the server reads only what it uses.
    model_config = ConfigDict(extra="ignore", frozen=True)


class TaskSpec(_Lenient):
    name: str
    type: Literal["binary", "regression"]


class SparseFeature(_Lenient):
    name: str
    vocab_size: int
    side: Literal["user", "item"]


class DenseFeature(_Lenient):
    name: str
    side: Literal["user", "item"]


class FeatureSpec(_Lenient):
    sparse: tuple[SparseFeature, ...] = ()
    dense: tuple[DenseFeature, ...] = ()


class Manifest(_Lenient):
    format_version: Literal[1]  # the format this server reads (docs/contracts.md); a later one may change files
    kind: Literal["ranking", "retrieval"]
    name: str
    version: str
    family: str = ""
    tasks: tuple[TaskSpec, ...]
    features: FeatureSpec
    onnx_sha256: str
    files: dict[str, str] = {}


@dataclass(frozen=True)
class FeatureLayout:
    """Column counts of the ranking graph inputs: user-side columns first, then item-side."""

    user_sparse: int
    item_sparse: int
    user_dense: int
    item_dense: int
    vocab_sizes: np.ndarray  # int64[S], one per sparse column

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> FeatureLayout:
        sparse, dense = manifest.features.sparse, manifest.features.dense
        for group in (sparse, dense):
            seen_item = False
            for feature in group:
                seen_item |= feature.side == "item"
                if seen_item and feature.side == "user":
                    raise PackageError(
                        f"feature {feature.name!r}: user-side columns must precede item-side ones"
                    )
        return cls(
            user_sparse=sum(f.side == "user" for f in sparse),
            item_sparse=sum(f.side == "item" for f in sparse),
            user_dense=sum(f.side == "user" for f in dense),
            item_dense=sum(f.side == "item" for f in dense),
            vocab_sizes=np.array([f.vocab_size for f in sparse], dtype=np.int64),
        )


@dataclass(frozen=True)
class ModelPackage:
    """A verified package on disk: manifest, checksums checked, golden and item tables read."""

    path: Path
    manifest: Manifest
    manifest_digest: str  # sha256 of manifest.json: a republished package changes it
    layout: FeatureLayout
    golden: dict[str, np.ndarray]
    item_ids: np.ndarray  # int64[N]
    item_sparse: np.ndarray  # int64[N, item_sparse]
    item_dense: np.ndarray  # float32[N, item_dense]

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def factored_paths(self) -> tuple[Path, Path] | None:
        """The factored graphs (item parts, rank; ``models.factored``) when the package has them."""
        if FACTORED_ITEMS in self.manifest.files and FACTORED_RANK in self.manifest.files:
            return self.path / FACTORED_ITEMS, self.path / FACTORED_RANK
        return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_digest(path: Path) -> str:
    """The sha256 of ``path/manifest.json``, used to notice a republished version cheaply."""
    return file_sha256(path / "manifest.json")


def read_package(path: Path) -> ModelPackage:
    """Read and verify the ranking package in ``path``. A publish replacing it meanwhile is not handled here:
    the server's ``model_repository.load_model``, which also opens the graphs after this, loads again then.

    Raises:
        PackageError: naming the file and what is wrong (missing file, bad JSON, checksum mismatch, ...).
    """
    manifest_path = path / "manifest.json"
    try:
        raw = manifest_path.read_bytes()
        manifest = Manifest.model_validate(json.loads(raw))
    except FileNotFoundError:
        raise PackageError(f"{manifest_path}: missing") from None
    except OSError as exc:  # a folder in its place, no permission: the poll must log it, not crash on it
        raise PackageError(f"{manifest_path}: unreadable: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise PackageError(f"{manifest_path}: invalid manifest: {exc}") from None
    if manifest.kind != "ranking":
        raise PackageError(
            f"{manifest_path}: kind is {manifest.kind!r}, the ranker serves 'ranking' packages"
        )
    if manifest.name != path.parent.name or manifest.version != path.name:
        raise PackageError(
            f"{manifest_path}: names {manifest.name}/{manifest.version} but lives in {path.parent.name}/{path.name}"
        )
    _verify(path / "model.onnx", manifest.onnx_sha256)
    for relative, expected in manifest.files.items():
        _verify(path / relative, expected)
    layout = FeatureLayout.from_manifest(manifest)
    golden = _load_npz(path / "golden.npz")
    item_ids, item_sparse, item_dense = _item_table(path / "item_features.npz", layout)
    return ModelPackage(
        path=path,
        manifest=manifest,
        manifest_digest=hashlib.sha256(raw).hexdigest(),
        layout=layout,
        golden=golden,
        item_ids=item_ids,
        item_sparse=item_sparse,
        item_dense=item_dense,
    )


def _verify(path: Path, expected: str) -> None:
    if not path.is_file():
        raise PackageError(f"{path}: missing")
    try:
        actual = file_sha256(path)
    except OSError as exc:  # deleted or made unreadable since is_file (a republish in progress)
        raise PackageError(f"{path}: unreadable: {exc.strerror}") from None
    if actual != expected:
        raise PackageError(f"{path}: sha256 {actual} does not match the manifest's {expected}")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise PackageError(f"{path}: missing")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # a truncated or corrupt .npz
        raise PackageError(f"{path}: unreadable: {exc}") from None


def _item_table(path: Path, layout: FeatureLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not path.is_file():  # optional: every candidate then takes the out-of-vocabulary row
        return (
            np.zeros(0, np.int64),
            np.zeros((0, layout.item_sparse), np.int64),
            np.zeros((0, layout.item_dense), np.float32),
        )
    data = _load_npz(path)
    try:
        ids = np.asarray(data["ids"], dtype=np.int64).reshape(-1)
        sparse = np.asarray(data.get("sparse", np.zeros((len(ids), 0))), dtype=np.int64).reshape(len(ids), -1)
        dense = np.asarray(data.get("dense", np.zeros((len(ids), 0))), dtype=np.float32).reshape(len(ids), -1)
    except (KeyError, ValueError) as exc:
        raise PackageError(f"{path}: expected ids[N], sparse[N, S_item], dense[N, D_item]: {exc}") from None
    if sparse.shape[1] != layout.item_sparse or dense.shape[1] != layout.item_dense:
        raise PackageError(
            f"{path}: item table has {sparse.shape[1]} sparse / {dense.shape[1]} dense columns, the manifest "
            f"declares {layout.item_sparse} / {layout.item_dense} item-side columns"
        )
    if len(np.unique(ids)) != len(ids):
        raise PackageError(f"{path}: duplicate item ids")
    return ids, sparse, dense
