"""Versioned retrieval model packages: verify, load (ONNX session + index + graph store), hot swap, unload.

A package is ``<repository>/<name>/<version>/`` as written by ``python -m models.retrieval export`` (see
docs/contracts.md). Loading verifies every sha256 of the manifest before anything is opened. A new version, or a
rebuilt index of a served version, is loaded completely off to the side and then published with one dict
assignment, so requests in flight keep the object they resolved and no request ever sees a half-loaded model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from grpc_serving.version_folder import load_without_swap
from retrieval_server.errors import ModelNotFound, ModelNotReady, PackageError
from retrieval_server.graph_store import GraphStore
from retrieval_server.index import EXACT_MAX_ITEMS, FaissIndex, build_index

logger = logging.getLogger(__name__)

ModelKey = tuple[str, str]
_CANONICAL_ID = re.compile(r"0|-?[1-9][0-9]{0,18}")  # ASCII digits only, as str(int) writes an int64


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def session_providers() -> list[str]:
    """CUDA first when this onnxruntime build and machine offer it, then CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


@dataclass
class LoadedModel:
    """One served version: encoder session, index over the stored embeddings and the graph store."""

    name: str
    version: str
    manifest: dict[str, Any]
    session: ort.InferenceSession
    index: FaissIndex
    embeddings: np.ndarray
    store: GraphStore
    positions: dict[int, int]
    provider: str
    fingerprint: str

    @property
    def key(self) -> ModelKey:
        return (self.name, self.version)

    def position(self, user_id: str) -> int | None:
        """Index position of a user id, ``None`` when unknown.

        Only the canonical decimal form of a node id (what ``str(int)`` gives) names it: ``int()`` also reads
        " 42 ", "4_2", "+42", "042" and non-ASCII digits as 42, while the experiment router hashes the id
        string, so those are other users and must not get user 42's candidates.
        """
        if not _CANONICAL_ID.fullmatch(user_id):
            return None
        return self.positions.get(int(user_id))

    def embed(self, features: np.ndarray, neighbour_positions: np.ndarray, seed: int) -> np.ndarray:
        """Embed an unseen user on the fly with the ONNX encoder; deterministic for a given ``seed``."""
        feeds = self.store.encoder_inputs(features, neighbour_positions, np.random.default_rng(seed))
        return self.session.run(["embedding"], feeds)[0][0]


def _load_index(folder: Path, fanouts: tuple[int, int]) -> tuple[GraphStore, np.ndarray]:
    """The graph store and the embeddings, one finite row per node: a NaN row is never found, and a query
    vector next to it got no candidates at all.

    Raises:
        PackageError: naming the file and what is wrong with it.
    """
    path = folder / "graph.npz"
    try:
        store = GraphStore.load(path, fanouts)
        path = folder / "embeddings.npy"
        embeddings = np.load(path).astype(np.float32)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise PackageError(f"{path}: {exc}") from None
    if embeddings.ndim != 2 or embeddings.shape[0] != len(store.ids):
        raise PackageError(
            f"{path}: shape {embeddings.shape}, expected one row per node ({len(store.ids)} ids)"
        )
    bad = ~np.all(np.isfinite(embeddings), axis=1)
    if bad.any():
        raise PackageError(
            f"{path}: {int(bad.sum())} rows are not finite (the first: node id {store.ids[bad][0]})"
        )
    return store, embeddings


def _first_line(exc: Exception) -> str:
    """The first line of an onnxruntime error (they run over several), for a one-line PackageError."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_encoder(
    package: Path, session: ort.InferenceSession, store: GraphStore, embeddings: np.ndarray
) -> None:
    """The encoder reads the stored node features in samples of the manifest's fan-outs and writes vectors as
    wide as the index's: else only the first unseen user finds out (an ONNX error, or a faiss assertion), as
    an INTERNAL error.

    Raises:
        PackageError: naming both widths (or sample sizes).
    """
    inputs = {i.name: i.shape for i in session.get_inputs()}
    declared = inputs.get("node_features", [None, None])[-1]
    if isinstance(declared, int) and declared != store.num_features:
        raise PackageError(
            f"{package / 'model.onnx'}: node_features takes {declared} features, "
            f"{package / 'index' / 'graph.npz'} holds {store.num_features}"
        )
    f1, f2 = store.fanouts
    for input_name, slots in (("hop1_features", f1), ("hop2_features", f1 * f2)):
        shape = inputs.get(input_name) or []
        declared = shape[1] if len(shape) > 1 else None
        if isinstance(declared, int) and declared != slots:  # checked before a sample of that size is made
            raise PackageError(
                f"{package / 'model.onnx'}: {input_name} takes {declared} neighbours, "
                f"training_config.fanouts {[f1, f2]} of {package / 'manifest.json'} make {slots}"
            )
    feeds = store.encoder_inputs(store.features[0], store.neighbours(0), np.random.default_rng(0))
    try:
        width = session.run(["embedding"], feeds)[0].shape[-1]
    except Exception as exc:  # noqa: BLE001 (onnxruntime raises its own types: the message says what)
        raise PackageError(
            f"{package / 'model.onnx'}: cannot embed node {store.ids[0]}: {_first_line(exc)}"
        ) from None
    if width != embeddings.shape[1]:
        raise PackageError(
            f"{package / 'model.onnx'}: embedding output is {width} wide, "
            f"{package / 'index' / 'embeddings.npy'} is {embeddings.shape[1]} wide"
        )


def _fanouts(manifest_path: Path, manifest: dict[str, Any]) -> tuple[int, int]:
    """The two neighbour sample sizes (one per GAT layer) the encoder was exported with.

    Raises:
        PackageError: naming the key (-1 raised a numpy ValueError, 100000 a MemoryError, "88" read as 8, 8).
    """
    try:
        fanouts = manifest["training_config"]["fanouts"]
    except (KeyError, TypeError) as exc:
        raise PackageError(f"{manifest_path}: training_config.fanouts must list integers ({exc!r})") from None
    if not isinstance(fanouts, list) or not all(type(f) is int for f in fanouts):
        raise PackageError(f"{manifest_path}: training_config.fanouts must list integers, got {fanouts!r}")
    if len(fanouts) != 2:  # the encoder has two GAT layers: one neighbour sample size per hop
        raise PackageError(
            f"{manifest_path}: training_config.fanouts must give 2 sizes (one per hop), got {fanouts}"
        )
    if min(fanouts) < 1:
        raise PackageError(f"{manifest_path}: training_config.fanouts must be positive, got {fanouts}")
    return fanouts[0], fanouts[1]


def load_package(root: Path, name: str, version: str, exact_max_items: int = EXACT_MAX_ITEMS,
                 ann: str = "pq") -> LoadedModel:
    """Verify and load ``root/name/version``, again when a publish replaced it meanwhile.

    Raises:
        PackageError: missing files, checksum mismatch, wrong kind or inconsistent shapes; the message names the file.
    """
    package = root / name / version
    return load_without_swap(
        package, lambda: _load_package_once(package, name, version, exact_max_items, ann), PackageError
    )


def _load_package_once(package: Path, name: str, version: str, exact_max_items: int, ann: str) -> LoadedModel:
    manifest_path = package / "manifest.json"
    if not manifest_path.is_file():
        raise PackageError(f"{manifest_path}: not found")
    try:
        raw = manifest_path.read_bytes()
        manifest = json.loads(raw)
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8 (a half-written file)
        raise PackageError(f"{manifest_path}: unreadable: {exc}") from None
    if not isinstance(manifest, dict):
        raise PackageError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("kind") != "retrieval":
        raise PackageError(f"{manifest_path}: kind is {manifest.get('kind')!r}, expected 'retrieval'")
    if manifest.get("format_version") != 1:  # a later format may change what the files mean
        raise PackageError(f"{manifest_path}: format_version {manifest.get('format_version')!r}, this server reads 1")
    files = manifest.get("files", {})
    if not isinstance(files, dict):  # ``**files`` raised a TypeError: a traceback at start, every poll after
        raise PackageError(
            f"{manifest_path}: files must be an object (path -> sha256), got {type(files).__name__}"
        )
    expected = {"model.onnx": manifest.get("onnx_sha256"), **files}
    for rel in ("model.onnx", "index/embeddings.npy", "index/graph.npz"):
        if rel not in expected or expected[rel] is None:
            raise PackageError(f"{manifest_path}: no sha256 recorded for {rel}")
    for rel, digest in expected.items():
        path = package / rel
        if not path.is_file():
            raise PackageError(f"{path}: listed in the manifest but missing")
        if _sha256(path) != digest:
            raise PackageError(f"{path}: sha256 does not match the manifest")
    fanouts = _fanouts(manifest_path, manifest)
    store, embeddings = _load_index(package / "index", fanouts)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # a CUDA build without CUDA libraries would log errors before falling back
    options.intra_op_num_threads = 1  # one user per run: the server parallelises across requests instead
    wanted = session_providers()
    try:
        session = ort.InferenceSession(str(package / "model.onnx"), sess_options=options, providers=wanted)
    except Exception as exc:  # noqa: BLE001 (onnxruntime's own types; a traceback at start, every poll after)
        raise PackageError(
            f"{package / 'model.onnx'}: onnxruntime cannot load it: {_first_line(exc)}"
        ) from None
    provider = session.get_providers()[0]
    if provider != wanted[0]:
        logger.warning("%s:%s: %s unavailable, running on %s", name, version, wanted[0], provider)
    _check_encoder(package, session, store, embeddings)
    logger.info("loaded %s:%s on %s (%d items, %d-d)", name, version, provider, len(embeddings), embeddings.shape[1])
    return LoadedModel(
        name=name,
        version=version,
        manifest=manifest,
        session=session,
        index=build_index(embeddings, exact_max_items, ann),
        embeddings=embeddings,
        store=store,
        positions=store.position_map(),
        provider=provider,
        fingerprint=hashlib.sha256(raw).hexdigest(),
    )


class ModelRepository:
    """The versions the server holds, by (name, version), plus the default version."""

    def __init__(self, root: str | Path, exact_max_items: int = EXACT_MAX_ITEMS, ann: str = "pq") -> None:
        self.root = Path(root)
        self.exact_max_items = exact_max_items
        self.ann = ann
        self._models: dict[ModelKey, LoadedModel] = {}
        self._default: ModelKey | None = None
        self._load_lock = threading.Lock()
        self._failed: dict[ModelKey, str] = {}  # manifest fingerprint whose reload failed: not retried

    def load(self, name: str, version: str, default: bool = False) -> LoadedModel:
        """Load (or reload) a version and publish it atomically; the old object serves until then."""
        with self._load_lock:
            loaded = load_package(self.root, name, version, self.exact_max_items, self.ann)
            self._models = {**self._models, loaded.key: loaded}
            if default or self._default is None:
                self._default = loaded.key
        return loaded

    def unload(self, name: str, version: str) -> None:
        with self._load_lock:
            if (name, version) == self._default:
                raise PackageError(f"{name}:{version} is the default model; make another version the default first")
            self._models = {k: v for k, v in self._models.items() if k != (name, version)}

    def set_default(self, name: str, version: str) -> None:
        if (name, version) not in self._models:
            raise ModelNotFound(f"model {name}:{version} is not loaded")
        self._default = (name, version)

    def refresh(self) -> list[ModelKey]:
        """Reload every served version whose manifest changed on disk (e.g. the index job rewrote its index)."""
        changed = []
        for key, model in list(self._models.items()):
            path = self.root / key[0] / key[1] / "manifest.json"
            try:
                fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue
            if fingerprint != model.fingerprint and self._failed.get(key) != fingerprint:
                try:
                    self.load(*key, default=key == self._default)
                    self._failed.pop(key, None)
                    changed.append(key)
                except PackageError as exc:  # keep serving the old version
                    self._failed[key] = fingerprint
                    logger.error("reload of %s:%s failed, keeping the loaded one: %s", *key, exc)
        return changed

    def get(self, name: str = "", version: str = "") -> LoadedModel:
        """The named version, or the default when ``name`` is empty (a name alone picks the default's version
        when it has that name, else the highest loaded version of that name)."""
        models = self._models
        if not models or self._default is None:
            raise ModelNotReady("no model is loaded yet")
        if not name:
            return models[self._default]
        if not version:
            if self._default[0] == name:
                return models[self._default]
            versions = sorted((k[1] for k in models if k[0] == name), key=lambda v: (len(v), v))
            if versions:
                return models[(name, versions[-1])]
        elif (name, version) in models:
            return models[(name, version)]
        loaded = ", ".join(f"{n}:{v}" for n, v in sorted(models))
        raise ModelNotFound(f"model {name}:{version or '*'} is not loaded; loaded: {loaded}")

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    @property
    def default(self) -> ModelKey | None:
        return self._default
