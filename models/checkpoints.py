"""Reading a training checkpoint back: one clear error for a path that is no checkpoint of the command that
reads it, instead of whatever ``torch.load``'s unpickler meets in a foreign file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.errors import ModelsError


def read_checkpoint(path: str | Path, keys: Sequence[str], writer: str) -> dict[str, Any]:
    """The payload ``torch.save`` wrote at ``path``, which must hold ``keys``.

    Args:
        path: the checkpoint file.
        keys: what the caller reads from the payload.
        writer: the command that writes such checkpoints, for the message (``python -m models train``).

    Raises:
        ModelsError: a missing path, a folder, an unreadable or foreign file, or a payload without ``keys``.
    """
    path = Path(path)
    if not path.exists():
        raise ModelsError(f"checkpoint {path} not found (`{writer}` writes one)")
    if not path.is_file():
        raise ModelsError(f"checkpoint {path} is not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch.load raises whatever its unpickler meets in a foreign file
        raise ModelsError(f"{path} is not a checkpoint written by `{writer}`: {exc}") from None
    missing = [key for key in keys if key not in payload] if isinstance(payload, dict) else None
    if missing is None or missing:
        what = f"it lacks {missing}" if missing else f"it holds a {type(payload).__name__}"
        raise ModelsError(f"{path} is not a checkpoint written by `{writer}`: {what}")
    return payload
