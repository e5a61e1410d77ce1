"""Loading a model version folder ``<repository>/<name>/<version>/`` that a publish may replace meanwhile.

A publish (``models.publish``) swaps the whole folder for a new one in one step, but a server reads the
manifest and then opens the other files by path: a swap in between checked the new files against the old
manifest (a checksum error, which stops a server starting then), or paired files opened after the checks
with the other version's manifest (a version mixing two publishes, loaded without an error). Each publish
puts a new folder in place, so a load is whole when the folder (inode) and its manifest are the same after it
as before it; else it is loaded again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 3
"""Loads of one version before giving up when a publish replaced it during each of them."""

_Identity = tuple[int, int, bytes]


def _identity(folder: Path, held: int | None = None) -> _Identity | None:
    """The folder's (device, inode) (of ``held``, a descriptor of it, when given) and its manifest's bytes;
    None while it is missing or unreadable."""
    try:
        info = os.fstat(held) if held is not None else os.stat(folder)
        return info.st_dev, info.st_ino, (folder / "manifest.json").read_bytes()
    except OSError:
        return None


def _open_folder(folder: Path) -> int | None:
    """A descriptor of ``folder``, None while it is missing or unreadable."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def load_without_swap(
    folder: Path, load: Callable[[], T], error: type[Exception], attempts: int = ATTEMPTS
) -> T:
    """``load()`` the version in ``folder`` again while a publish replaced it during the load.

    The folder is held open during each load: a removed folder's inode number could otherwise go to the next
    publish's folder, which would pass for the same folder (a version published, replaced and published
    again during one load, 12 mixed loads of 856 in a loop republishing every 20 ms).

    An ``error`` raised while nothing replaced the folder is the version's own (a corrupt or missing file)
    and propagates unchanged; so does any other exception.

    Raises:
        error: the load's own, or (one line naming ``folder``) a publish replaced it during every attempt.
    """
    for _ in range(attempts):
        held = _open_folder(folder)
        try:
            before = _identity(folder, held) if held is not None else None
            try:
                loaded = load()
            except error:
                if _identity(folder) == before:
                    raise
            else:
                if _identity(folder) == before:
                    return loaded
        finally:
            if held is not None:
                os.close(held)
        logger.info("%s: republished while it loaded; loading it again", folder)
    raise error(f"{folder}: republished while it loaded, {attempts} times in a row")
