"""Reading a training checkpoint back: one clear error for a path that is no checkpoint of the command that
reads it, instead of whatever ``torch.load``'s unpickler meets in a foreign file; writing one so that a run
killed meanwhile leaves the previous one whole; and the parts of a resumable training state that are not the
training loop's own (a module's every tensor, the random streams)."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

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


def write_atomically(path: Path, payload: Any) -> None:
    """``torch.save`` ``payload`` to a temporary file beside ``path``, flushed to disk, then renamed over
    ``path``: a run killed (or a disk filled) while saving leaves the previous file whole, never half of
    one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def module_state(module: nn.Module) -> dict[str, dict[str, Tensor]]:
    """``state_dict()`` plus the buffers it leaves out (non-persistent ones, such as sparse sharing's initial
    weights that its rewinds restore), so that the module a run resumes with is the one it saved."""
    state = module.state_dict()
    buffers = {name: buffer for name, buffer in module.named_buffers() if name not in state}
    return {"state_dict": state, "buffers": buffers}


@torch.no_grad()
def load_module_state(module: nn.Module, saved: dict[str, dict[str, Tensor]]) -> None:
    """Put back what ``module_state`` took from a module built the same way (strict: a missing or unexpected
    tensor raises RuntimeError or KeyError)."""
    module.load_state_dict(saved["state_dict"])
    buffers = dict(module.named_buffers())
    for name, value in saved["buffers"].items():
        buffers[name].copy_(value)


def rng_states(batches: np.random.Generator, device: torch.device) -> dict[str, Any]:
    """Every random stream training draws from: torch's (dropout, GRec's router jitter, CSRec's contrastive
    masks), the GPU's when training on one, numpy's and Python's global ones, and the batch order's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "batches": batches.bit_generator.state,
    }


def restore_rng_states(states: dict[str, Any], batches: np.random.Generator, device: torch.device) -> None:
    """Set every stream ``rng_states`` recorded back to where it was."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    batches.bit_generator.state = states["batches"]


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignored: Sequence[str]) -> list[str]:
    """``key: saved value in the state, current value now`` for each config key (but ``ignored``) that
    differs, for the message that refuses to resume a run with another config."""
    keys = sorted((saved.keys() | current.keys()) - set(ignored))
    return [
        f"{key}: {saved.get(key)!r} in the state, {current.get(key)!r} now"
        for key in keys
        if saved.get(key) != current.get(key)
    ]
