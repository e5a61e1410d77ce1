"""Model packages (docs/contracts.md): ``<repository>/<name>/<version>/`` with model.onnx, manifest.json,
golden.npz and optional item_features.npz (ranking) or index/ (retrieval).

This module owns the manifest dataclass, its reader/writer and the checks a server runs before it loads a
package: the ONNX sha256, every other file's sha256, and (optionally) golden parity under onnxruntime.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.errors import PackageError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
GOLDEN_FILE = "golden.npz"
ITEM_FEATURES_FILE = "item_features.npz"


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output; ``-1`` marks a dynamic axis."""

    name: str
    dtype: str
    shape: list[int]


@dataclass
class Manifest:
    """``manifest.json``; key meanings are in docs/contracts.md."""

    kind: Literal["ranking", "retrieval"]
    name: str
    version: str
    family: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    tasks: list[dict[str, str]] = field(default_factory=list)
    features: dict[str, Any] = field(default_factory=dict)
    onnx_sha256: str = ""
    files: dict[str, str] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "manifest") -> Manifest:
        """Validate keys and types of the parts servers rely on; errors name the file and the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PackageError(f"{source}: unknown keys {unknown}; allowed keys: {sorted(known)}")
        required = {"kind", "name", "version", "family", "inputs", "outputs", "onnx_sha256"}
        missing = sorted(required - set(data))
        if missing:
            raise PackageError(f"{source}: missing keys {missing}")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise PackageError(f"{source}: format_version {data['format_version']} is not {FORMAT_VERSION}")
        if data["kind"] not in ("ranking", "retrieval"):
            raise PackageError(f"{source}: kind must be 'ranking' or 'retrieval', got {data['kind']!r}")
        if not isinstance(data["version"], str):
            raise PackageError(f"{source}: version must be a string, got {data['version']!r}")
        try:
            tensors = {k: [TensorInfo(**t) for t in data[k]] for k in ("inputs", "outputs")}
        except TypeError as exc:
            raise PackageError(f"{source}: inputs/outputs entries need name, dtype, shape ({exc})") from None
        for task in data.get("tasks", []):
            if set(task) != {"name", "type"} or task["type"] not in ("binary", "regression"):
                raise PackageError(
                    f"{source}: tasks entries are {{name, type: binary|regression}}, got {task}"
                )
        return cls(**{**data, **tensors})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_dir(repository: Path | str, name: str, version: str) -> Path:
    return Path(repository) / name / str(version)


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Fill in the checksums of everything in ``directory`` and write ``manifest.json`` last."""
    manifest.onnx_sha256 = sha256_file(directory / ONNX_FILE)
    manifest.files = {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name not in (ONNX_FILE, MANIFEST)
    }
    target = directory / MANIFEST
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False))
    tmp.replace(target)
    return target


def read_manifest(directory: Path | str) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise PackageError(f"{path}: no manifest")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PackageError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    return Manifest.from_dict(data, source=str(path))


def verify_package(directory: Path | str, check_golden: bool = False, atol: float = 1e-4) -> Manifest:
    """Check the manifest, every checksum and, if asked, golden parity; returns the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    onnx_path = directory / ONNX_FILE
    if not onnx_path.exists():
        raise PackageError(f"{directory}: {ONNX_FILE} is missing")
    if sha256_file(onnx_path) != manifest.onnx_sha256:
        raise PackageError(f"{onnx_path}: sha256 does not match manifest onnx_sha256")
    for relative, expected in manifest.files.items():
        path = directory / relative
        if not path.exists():
            raise PackageError(f"{directory}: {relative} is listed in the manifest but missing")
        if sha256_file(path) != expected:
            raise PackageError(f"{path}: sha256 does not match the manifest")
    if check_golden:
        check_golden_parity(directory, manifest, atol)
    return manifest


def check_golden_parity(directory: Path, manifest: Manifest, atol: float = 1e-4) -> float:
    """Run golden inputs through onnxruntime (CPU) and compare with the stored outputs; returns max |diff|."""
    import onnxruntime as ort  # local: only parity checks need it

    golden_path = directory / GOLDEN_FILE
    if not golden_path.exists():
        raise PackageError(f"{directory}: {GOLDEN_FILE} is missing")
    with np.load(golden_path) as golden:
        arrays = dict(golden)
    session = ort.InferenceSession(str(directory / ONNX_FILE), providers=["CPUExecutionProvider"])
    feeds = {i.name: arrays[i.name] for i in manifest.inputs}
    outputs = session.run([o.name for o in manifest.outputs], feeds)
    worst = 0.0
    for info, value in zip(manifest.outputs, outputs, strict=True):
        worst = max(worst, float(np.max(np.abs(value - arrays[info.name]))) if value.size else 0.0)
    if worst > atol:
        raise PackageError(
            f"{directory}: golden parity failed, max |onnxruntime - stored| = {worst:.2e} > {atol}"
        )
    return worst
