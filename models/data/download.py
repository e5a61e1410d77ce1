"""Fetch a public data file once, verified against a pinned digest before it is used.

A file is written under its final name only after its digest matched, so an interrupted or tampered download
never looks like data. ``file://`` URLs work too (tests use them; they never touch the network).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from models.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    """Where a file officially lives and its digest: sha256 where we could pin it, else the publisher's md5."""

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None

    def verify(self, path: Path) -> None:
        """Raise DataError unless ``path`` has the pinned digest (or if none is pinned)."""
        if self.sha256 is None and self.md5 is None:
            raise DataError(
                f"{self.filename}: no checksum is pinned for {self.url}; refusing an unverified download"
            )
        algorithm, expected = ("sha256", self.sha256) if self.sha256 else ("md5", self.md5)
        actual = file_digest(path, algorithm)
        if actual != expected:
            raise DataError(f"{path}: {algorithm} {actual} does not match the pinned {expected} ({self.url})")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(remote: RemoteFile, directory: Path, timeout: float = 60.0) -> Path:
    """Return ``directory/remote.filename``, downloading and verifying it first when it is not there yet."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / remote.filename
    if target.exists():
        remote.verify(target)
        return target
    logger.info("downloading %s to %s", remote.url, target)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{remote.filename}.", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(remote.url, timeout=timeout) as response:  # noqa: S310 (pinned URLs)
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=remote.filename) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        tmp.write(chunk)
                        bar.update(len(chunk))
        except OSError as exc:
            tmp_path.unlink(missing_ok=True)
            raise DataError(f"could not download {remote.url}: {exc}") from exc
    try:
        remote.verify(tmp_path)
    except DataError:
        tmp_path.unlink(missing_ok=True)
        raise
    shutil.move(tmp_path, target)
    return target
