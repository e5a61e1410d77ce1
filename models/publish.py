"""Publishing a version folder ``<repository>/<name>/<version>/`` atomically.

A version is assembled in a hidden staging folder beside it (``.<version>.<uuid>.staging``), flushed to disk
and renamed into place; a version it replaces is swapped out in one step (Linux ``renameat2``
``RENAME_EXCHANGE``), so that a server loading ``<name>/<version>/`` at any moment finds the old version or
the new one, whole, never a missing or half-removed one. Where the file system cannot exchange, the old
version is renamed aside (``.<version>.<uuid>.aside``) and the new one in: a reader may then find the version
missing for that moment (it retries), never half of one.

A staging folder is locked (``flock``) by the process writing it for as long as it does, and the swap happens
under a lock on ``<repository>/<name>/``; the kernel drops a lock when its process ends however it ends. So a
publish removes the staging folders that killed publishes left (unlocked) and never one in use, and puts back
an aside version that a publish killed between its two renames left without its replacement. Servers load
only the versions they are told to, and a version is one folder name not starting with '.': hidden folders
are never taken for versions.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models.errors import PackageError

logger = logging.getLogger(__name__)

# ".<version>.<32 hex>.staging|aside": the version is any folder name (it may hold dots); the hex is uuid4's
_HIDDEN = re.compile(r"\.(?P<version>.+)\.[0-9a-f]{32}\.(?P<kind>staging|aside)")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _hidden_folder(target: Path, kind: str) -> Path:
    """A fresh name beside ``target`` for its staging (``kind`` "staging") or set-aside ("aside") folder."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.{kind}")


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock, or None when another holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def model_lock(folder: Path) -> Iterator[None]:
    """Hold ``<repository>/<name>/`` exclusively: publishes of one model never clean up or swap at once."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale(folder: Path) -> None:
    """Remove the staging and aside folders that no live process holds (left by a crash); an aside version
    whose replacement never arrived goes back in place instead. Call with ``model_lock(folder)`` held."""
    for path in sorted(folder.iterdir()):
        match = _HIDDEN.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        try:
            fd = _try_lock(path)
        except FileNotFoundError:  # its own publish removed it (after an error) since the listing
            continue
        if fd is None:  # a publish in progress
            continue
        try:
            if match["kind"] == "aside" and not (folder / match["version"]).exists():
                path.rename(folder / match["version"])
                logger.warning(
                    "%s: put back from %s (a publish stopped half-way)", folder / match["version"], path
                )
            else:
                shutil.rmtree(path)
                logger.info("removed %s, left by a publish that stopped", path)
        finally:
            os.close(fd)


@contextmanager
def new_staging(target: Path) -> Iterator[Path]:
    """A new, locked, empty staging folder beside ``target``, created after removing stale ones; removed
    when the block raises, or when it ends and the block did not move it away (``publish``)."""
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    staging = _hidden_folder(target, "staging")
    with model_lock(folder):
        remove_stale(folder)
        staging.mkdir()
        fd = _try_lock(staging)  # nobody else can hold it yet: taken under the model lock it was made in
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one step; False where the OS or the file system cannot (then nothing moved)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _sync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk: a rename must not outlive a power cut that
    leaves the files it published empty."""
    for path in [*folder.rglob("*"), folder]:
        if not path.is_symlink():
            _sync_path(path)


def _sync_path(path: Path) -> None:
    """``fsync`` one file or folder (a folder: the names in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: Path, target: Path, overwrite: bool) -> None:
    """Flush ``staging`` and rename it to ``target``, exchanging it for the version there with ``overwrite``.
    Call with ``model_lock(target.parent)`` held.

    Raises:
        PackageError: ``target`` exists and there is no ``overwrite`` (the later of two publishes).
        OSError: the file system refused.
    """
    _sync_tree(staging)
    if target.exists() and not overwrite:
        raise PackageError(f"{target} already exists: another export of it finished first")
    if not target.exists():
        staging.rename(target)
    elif _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # the old version now; a crash leaves it to remove_stale
    else:
        _rename_aside_then_in(staging, target)
    _sync_path(target.parent)


def _rename_aside_then_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` without an exchange: old version aside, new one in, old one removed.
    The old one goes back when the second rename fails, and ``remove_stale`` puts it back after a crash
    (``model_lock`` keeps it from doing so while this runs)."""
    aside = _hidden_folder(target, "aside")
    target.rename(aside)
    try:
        staging.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
