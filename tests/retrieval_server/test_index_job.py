"""The index job (``python -m models.retrieval index``, ``build_index``) over a version the server serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.errors import PackageError
from models.graph.export import build_index
from retrieval_server.model_repository import load_package
from tests.retrieval_server.conftest import republish


class Crash(BaseException):
    """The job dies at that point: a BaseException, which no error handling on the way takes for an error."""


def _contents(package: Path) -> dict[str, bytes]:
    return {p.relative_to(package).as_posix(): p.read_bytes() for p in package.rglob("*") if p.is_file()}


def test_a_job_killed_while_writing_the_index_leaves_the_served_version_whole(repository_root, monkeypatch):
    """The job wrote index/embeddings.npy in place, then the manifest: a server loading the version meanwhile
    met a half-written index, and a job killed there (or a full disk) left a version no server could load."""
    package = repository_root / "ssmtl" / "1"
    before = _contents(package)
    real_save = np.save

    def save_half_then_crash(file, array, *args, **kwargs) -> None:
        real_save(file, array, *args, **kwargs)
        with open(file, "r+b") as handle:
            handle.truncate(Path(file).stat().st_size // 2)
        load_package(repository_root, "ssmtl", "1")  # a server (re)loading the version at this moment
        raise Crash

    monkeypatch.setattr(np, "save", save_half_then_crash)
    with pytest.raises(Crash):
        build_index(package)
    monkeypatch.setattr(np, "save", real_save)
    assert _contents(package) == before
    load_package(repository_root, "ssmtl", "1")
    assert np.array_equal(build_index(package), np.load(package / "index" / "embeddings.npy"))
    assert sorted(p.name for p in package.parent.iterdir()) == ["1", "2"]  # no staging folder left


def test_an_index_job_never_undoes_a_publish_of_its_version(repository_root, monkeypatch):
    """A version republished (``export --overwrite``) while the job embedded the old one got the old manifest
    over its new files: the job's index and manifest went into whatever folder held the version by then."""
    package = repository_root / "ssmtl" / "1"
    real_save = np.save

    def republish_then_save(file, array, *args, **kwargs) -> None:
        republish(repository_root, "ssmtl", "1", source="2")
        real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", republish_then_save)
    with pytest.raises(PackageError, match=f"{package}: republished while this ran; run it again"):
        build_index(package)
    assert _contents(package)["model.onnx"] == (repository_root / "ssmtl" / "2" / "model.onnx").read_bytes()
    assert load_package(repository_root, "ssmtl", "1").manifest["version"] == "1"
    assert sorted(p.name for p in package.parent.iterdir()) == ["1", "2"]
