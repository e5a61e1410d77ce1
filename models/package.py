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
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.errors import PackageError
from models.publish import model_lock, new_staging, publish

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
GOLDEN_FILE = "golden.npz"
ITEM_FEATURES_FILE = "item_features.npz"
# A graph agrees with PyTorch when |onnx - torch| <= PARITY_ATOL + PARITY_RTOL * |torch| (np.isclose's test):
# float32 keeps about 7 digits, so a regression output in the thousands moves by 1e-4 with one rounding.
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-5


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
            keys = set(task) if isinstance(task, dict) else None  # set() of a number raised TypeError
            if keys != {"name", "type"} or task["type"] not in ("binary", "regression"):
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


@contextmanager
def staged_package(
    repository: Path | str, name: str, version: str, overwrite: bool = False
) -> Iterator[Path]:
    """A fresh sibling folder to assemble ``<repository>/<name>/<version>/`` in, published when the block
    ends without an error and removed when it raises (``models.publish``): a failed or killed export never
    leaves a half-written version that a server could pick up, a version it replaces is swapped out in one
    step (a server loading it meanwhile gets the old one or the new one, whole), two publishes of one version
    at once never mix their files, and without ``overwrite`` an existing version is never replaced (the later
    of two publishes fails). Staging folders left by killed exports are removed here.

    Raises:
        PackageError: for a name or version that is not one folder name, a repository that is a file, a
            version that exists (without ``overwrite``), or a folder or file the OS will not create or write.
    """
    for what, value in (("name", name), ("version", str(version))):
        if not value or value.startswith(".") or "/" in value or "\\" in value:
            raise PackageError(
                f"package {what} {value!r} must be one folder name (not empty, no '/', no leading '.')"
            )
    if Path(repository).exists() and not Path(repository).is_dir():
        raise PackageError(f"model repository {repository} is a file, not a folder")
    target = package_dir(repository, name, version)
    if target.exists() and not overwrite:
        raise PackageError(f"{target} already exists (--overwrite, or overwrite=True, replaces it)")
    with ExitStack() as stack:
        try:
            staging = stack.enter_context(new_staging(target))
        except OSError as exc:  # a file on the way to it, a read-only disk: a traceback from the command line
            raise PackageError(f"cannot create a package in {target.parent}: {exc.strerror}") from None
        try:
            yield staging
            with model_lock(target.parent):
                publish(staging, target, overwrite)
        except OSError as exc:  # a full disk, a file size limit: one line naming the version, not a traceback
            raise PackageError(f"{target}: cannot write the package: {exc}") from None


@contextmanager
def restaged_package(directory: Path | str) -> Iterator[Path]:
    """A copy of the package in ``directory`` to change, published over it in one step when the block ends
    without an error (``models.publish``): a server loading the version meanwhile reads the old package,
    whole, and a crash leaves it as it was. The copy's files are hard links to the package's own: replace a
    file (remove it, then write it), never write into one.

    Raises:
        PackageError: the version was republished while the block ran (publishing the copy would undo that),
            or the OS refused a write.
    """
    target = Path(directory)
    try:
        with new_staging(target) as staging:
            with model_lock(target.parent):  # no publish swaps the version while it is copied
                before = (target / MANIFEST).read_bytes()
                shutil.copytree(target, staging, copy_function=_link_or_copy, dirs_exist_ok=True)
            yield staging
            with model_lock(target.parent):
                if (target / MANIFEST).read_bytes() != before:
                    raise PackageError(
                        f"{target}: republished while this ran; run it again on the new version"
                    )
                publish(staging, target, overwrite=True)
    except OSError as exc:
        raise PackageError(f"{target}: cannot write the package: {exc}") from None


def _link_or_copy(source: str, destination: str) -> None:
    """A hard link (no second copy of a large index), or a copy where the file system has none."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


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
    """The manifest of the package in ``directory``, or a one-line PackageError naming the file and what is
    wrong with it (``python -m models.retrieval index`` reads it first)."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise PackageError(f"{path}: no manifest")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PackageError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise PackageError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:  # a folder of that name, no permission
        raise PackageError(f"{path}: unreadable: {exc.strerror}") from None
    if not isinstance(data, dict):  # Manifest.from_dict met null or a list with a TypeError
        raise PackageError(f"{path}: a JSON object of manifest keys expected, got {type(data).__name__}")
    return Manifest.from_dict(data, source=str(path))


def verify_package(
    directory: Path | str, check_golden: bool = False, atol: float = PARITY_ATOL, rtol: float = PARITY_RTOL
) -> Manifest:
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
        check_golden_parity(directory, manifest, atol, rtol)
    return manifest


def parity_gap(actual: np.ndarray, expected: np.ndarray, rtol: float = PARITY_RTOL) -> float:
    """The largest ``|actual - expected| - rtol * |expected|`` (0 without values, inf where either is NaN):
    the outputs agree within ``atol`` and ``rtol`` when it is at most ``atol``."""
    if not actual.size:
        return 0.0
    gap = np.abs(actual - expected) - rtol * np.abs(expected)
    return float(np.max(np.where(np.isnan(gap), np.inf, gap)))


def check_golden_parity(
    directory: Path, manifest: Manifest, atol: float = PARITY_ATOL, rtol: float = PARITY_RTOL
) -> float:
    """Run golden inputs through onnxruntime (CPU) and compare with the stored outputs; returns the largest
    ``parity_gap``."""
    import onnxruntime as ort  # local: only parity checks need it

    golden_path = directory / GOLDEN_FILE
    if not golden_path.exists():
        raise PackageError(f"{directory}: {GOLDEN_FILE} is missing")
    with np.load(golden_path) as golden:
        arrays = dict(golden)
    session = ort.InferenceSession(str(directory / ONNX_FILE), providers=["CPUExecutionProvider"])
    feeds = {i.name: arrays[i.name] for i in manifest.inputs}
    outputs = session.run([o.name for o in manifest.outputs], feeds)
    pairs = zip(manifest.outputs, outputs, strict=True)
    worst = max(parity_gap(value, arrays[info.name], rtol) for info, value in pairs)
    if worst > atol:
        raise PackageError(
            f"{directory}: golden parity failed, |onnxruntime - stored| - {rtol} x |stored| = {worst:.2e} "
            f"> {atol}"
        )
    return worst
