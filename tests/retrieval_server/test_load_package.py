"""``load_package`` while the version it loads is republished (``export --overwrite`` swaps the folder)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval_server import model_repository
from retrieval_server.errors import PackageError
from retrieval_server.model_repository import load_package
from tests.retrieval_server.conftest import republish


def _republishing_first(repository_root: Path, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, which publishes ssmtl/2's files as ssmtl/1 the first time it is called, before it runs."""
    republished = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not republished:
            republish(repository_root, "ssmtl", "1", source="2")
            republished.append(True)
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    "between",
    ["_sha256", "_load_index"],
    ids=["the manifest and the checksums", "the checksums and the index"],
)
def test_a_version_republished_while_it_loads_is_loaded_whole(
    repository_root: Path, monkeypatch: pytest.MonkeyPatch, between: str
) -> None:
    """The manifest was read, then the other files opened by path: a republish in between checked the new
    files against the old manifest (a checksum error: a server starting then did not start), or after the
    checks loaded the new index under the old manifest, without an error."""
    real = getattr(model_repository, between)
    monkeypatch.setattr(model_repository, between, _republishing_first(repository_root, real))
    loaded = load_package(repository_root, "ssmtl", "1")
    package = repository_root / "ssmtl" / "1"
    assert loaded.fingerprint == hashlib.sha256((package / "manifest.json").read_bytes()).hexdigest()
    assert np.array_equal(loaded.embeddings, np.load(package / "index" / "embeddings.npy"))
    assert np.array_equal(
        loaded.embeddings, np.load(repository_root / "ssmtl" / "2" / "index" / "embeddings.npy")
    )


def test_a_version_republished_during_every_load_is_a_one_line_error(
    repository_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries are bounded: a version republished faster than it loads fails, saying so."""
    real = model_repository._sha256

    def republish_then_hash(path: Path) -> str:
        if path.name == "model.onnx":
            republish(repository_root, "ssmtl", "1", source="2")
        return real(path)

    monkeypatch.setattr(model_repository, "_sha256", republish_then_hash)
    package = repository_root / "ssmtl" / "1"
    with pytest.raises(PackageError) as raised:
        load_package(repository_root, "ssmtl", "1")
    assert str(raised.value) == f"{package}: republished while it loaded, 3 times in a row"


def test_a_corrupt_version_fails_with_its_own_error(repository_root: Path) -> None:
    """Nothing republished it: the checksum error, as it was, not a retry's."""
    embeddings = repository_root / "ssmtl" / "1" / "index" / "embeddings.npy"
    embeddings.write_bytes(embeddings.read_bytes() + b"\0")
    with pytest.raises(PackageError) as raised:
        load_package(repository_root, "ssmtl", "1")
    assert str(raised.value) == f"{embeddings}: sha256 does not match the manifest"
