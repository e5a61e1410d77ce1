"""Vectorised (numpy) GrowthBook hashing and assignment of many users at once, for previews and analysis.

Bit-identical to the scalar functions: FNV-1a over UTF-16 code units, processed one character column at a
time for all users, with per-row lengths masking the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from experiment_router.hashing import FNV_OFFSET_BASIS, FNV_PRIME, code_units, fnv1a32, hash_unit

_MASK = np.uint64(0xFFFFFFFF)
_PRIME = np.uint64(FNV_PRIME)
_POW10 = np.array([10**k for k in range(11)], dtype=np.uint64)


class UnitBatch:
    """Many unit ids as a padded matrix of code units; rows outside the BMP are hashed by the scalar path."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        arr = np.asarray(self.ids, dtype=str)
        width = max(arr.dtype.itemsize // 4, 1)
        self.units = arr.view(np.uint32).reshape(len(self.ids), width).astype(np.uint64)
        self.lengths = np.char.str_len(arr) if len(self.ids) else np.zeros(0, dtype=np.int64)
        self.scalar_rows = np.flatnonzero((self.units > 0xFFFF).any(axis=1))
        self.empty = self.lengths == 0

    def __len__(self) -> int:
        return len(self.ids)


def _fnv_columns(state: np.ndarray, units: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    for j in range(units.shape[1]):
        stepped = ((state ^ units[:, j]) * _PRIME) & _MASK
        state = np.where(lengths > j, stepped, state)
    return state


def _fnv_constant(state: np.ndarray, text: str) -> np.ndarray:
    for unit in code_units(text):
        state = ((state ^ np.uint64(unit)) * _PRIME) & _MASK
    return state


def _fnv_decimal(values: np.ndarray) -> np.ndarray:
    """FNV-1a of the decimal string of each value (no leading zeros)."""
    ndigits = np.searchsorted(_POW10, values, side="right").astype(np.int64)
    ndigits = np.maximum(ndigits, 1)
    state = np.full(values.shape, FNV_OFFSET_BASIS, dtype=np.uint64)
    for j in range(10):
        live = ndigits > j
        shift = _POW10[np.clip(ndigits - 1 - j, 0, 10)]
        digit = (values // shift) % np.uint64(10) + np.uint64(ord("0"))
        stepped = ((state ^ digit) * _PRIME) & _MASK
        state = np.where(live, stepped, state)
    return state


def hash_bulk(seed: str, batch: UnitBatch, version: int) -> np.ndarray:
    """GrowthBook hash of every id in `batch` (float64 in [0, 1); NaN for empty ids)."""
    n = len(batch)
    if version == 1:
        state = _fnv_columns(np.full(n, FNV_OFFSET_BASIS, dtype=np.uint64), batch.units, batch.lengths)
        out = (_fnv_constant(state, seed) % np.uint64(1000)).astype(np.float64) / 1000
    elif version == 2:
        start = np.full(n, fnv1a32(seed), dtype=np.uint64)
        first = _fnv_columns(start, batch.units, batch.lengths)
        out = (_fnv_decimal(first) % np.uint64(10000)).astype(np.float64) / 10000
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
