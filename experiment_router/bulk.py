"""Vectorised (numpy) GrowthBook hashing and assignment of many users at once, for previews and analysis.

Bit-identical to the scalar functions: FNV-1a over UTF-16 code units, processed one character column at a
time for all users, with per-row lengths masking the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from experiment_router.hashing import (
    FNV_OFFSET_BASIS,
    FNV_PRIME,
    code_units,
    decimal_high_states,
    fnv1a32,
    hash_unit,
)

_PRIME = np.uint32(FNV_PRIME)


class UnitBatch:
    """Many unit ids as a padded uint32 matrix of code units; rows outside the BMP use the scalar path."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        arr = np.asarray(self.ids, dtype=str)
        width = max(arr.dtype.itemsize // 4, 1)
        self.units = arr.view(np.uint32).reshape(len(self.ids), width)
        self.lengths = np.char.str_len(arr) if len(self.ids) else np.zeros(0, dtype=np.int64)
        self.min_length = int(self.lengths.min()) if len(self.ids) else 0
        self.scalar_rows = np.flatnonzero((self.units > 0xFFFF).any(axis=1))
        self.empty = self.lengths == 0

    def __len__(self) -> int:
        return len(self.ids)


def _fnv_columns(state: np.ndarray, batch: UnitBatch) -> np.ndarray:
    """Continue FNV-1a over each row's code units; uint32 arithmetic wraps mod 2**32 by itself."""
    units = batch.units
    for j in range(units.shape[1]):
        stepped = (state ^ units[:, j]) * _PRIME
        state = stepped if j < batch.min_length else np.where(batch.lengths > j, stepped, state)
    return state


def _fnv_constant(state: np.ndarray, text: str) -> np.ndarray:
    for unit in code_units(text):
        state = (state ^ np.uint32(unit)) * _PRIME
    return state


def _fnv_decimal(values: np.ndarray) -> np.ndarray:
    """FNV-1a of the decimal string of each uint32 value: high-digits table, then four padded digits."""
    table = np.frombuffer(decimal_high_states(), dtype=np.uint32)
    state = table[values // np.uint32(10000)]
    low = values % np.uint32(10000)
    for div in (1000, 100, 10, 1):
        digit = (low // np.uint32(div)) % np.uint32(10) + np.uint32(ord("0"))
        state = (state ^ digit) * _PRIME
    short = np.flatnonzero(values < 10000)  # no zero padding for numbers below 10**4
    for row in short:
        state[row] = fnv1a32(str(int(values[row])))
    return state


def hash_bulk(seed: str, batch: UnitBatch, version: int) -> np.ndarray:
    """GrowthBook hash of every id in `batch` (float64 in [0, 1); NaN for empty ids)."""
    n = len(batch)
    with np.errstate(over="ignore"):
        if version == 1:
            state = _fnv_columns(np.full(n, FNV_OFFSET_BASIS, dtype=np.uint32), batch)
            out = (_fnv_constant(state, seed) % np.uint32(1000)).astype(np.float64) / 1000
        elif version == 2:
            first = _fnv_columns(np.full(n, fnv1a32(seed), dtype=np.uint32), batch)
            out = (_fnv_decimal(first) % np.uint32(10000)).astype(np.float64) / 10000
        else:
            raise ValueError(f"unknown hash version {version}")
    for row in batch.scalar_rows:
        out[row] = hash_unit(seed, batch.ids[row], version)
    out[batch.empty] = np.nan
    return out


def choose_bulk(n: np.ndarray, ranges: Sequence[Sequence[float]]) -> np.ndarray:
    """Variation index per bucket value (-1 outside every range), like choose_variation."""
    out = np.full(n.shape, -1, dtype=np.int64)
    for i, (lo, hi) in enumerate(ranges):
        out[(out < 0) & (n >= lo) & (n < hi)] = i
    return out
