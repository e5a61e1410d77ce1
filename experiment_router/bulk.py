"""Vectorised (numpy) GrowthBook hashing and assignment of many users at once, for previews and analysis.

Bit-identical to the scalar functions: FNV-1a over UTF-16 code units. The ids' code units are read from one
flat buffer (the ids joined, so NUL characters and empty ids survive as they are) and regrouped column by
column with the ids sorted longest first: column j holds code unit j of every id longer than j, so each
FNV step updates a shrinking prefix of the states. Time and memory follow the total number of code units,
never users x the longest id; the last units of a few very long ids are finished in plain Python, where a
numpy call per unit would cost more than it saves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from experiment_router.evaluation import unit_string
from experiment_router.hashing import (
    FNV_OFFSET_BASIS,
    FNV_PRIME,
    code_units,
    decimal_high_states,
    fnv1a32,
    fnv1a32_update,
)

_PRIME = np.uint32(FNV_PRIME)
VECTOR_MIN_IDS = 32
"""A column is hashed with numpy while at least this many ids are that long; shorter tails go to Python."""


def _hash_texts(ids: list[Any]) -> tuple[list[str], str, np.ndarray | None]:
    """(hashed string of each id, all of them joined, mask of ids with no hash value or None if all have one).

    String ids hash as they are ("" is no value); other values as the JS SDK prints them (see unit_string).
    """
    try:
        joined = "".join(ids)
    except TypeError:  # not all strings
        texts = [unit_string(v) for v in ids]
        missing = np.fromiter((t is None for t in texts), dtype=bool, count=len(texts))
        strings = [t or "" for t in texts]
        return strings, "".join(strings), missing
    return ids, joined, None


def _utf16(texts: list[str], joined: str) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-16 code units of `joined` as uint8 if all ASCII else uint16, code-unit length of each text)."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    if joined.isascii():
        return np.frombuffer(joined.encode("ascii"), dtype=np.uint8), lengths
    units = np.frombuffer(joined.encode("utf-16-le", "surrogatepass"), dtype=np.uint16)
    if len(units) == len(joined):
        return units, lengths
    # characters outside the BMP are two code units: add each text's count of them
    points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    astral = np.concatenate(([0], np.cumsum(points > 0xFFFF)))
    ends = np.cumsum(lengths)
    return units, lengths + astral[ends] - astral[ends - lengths]


class UnitBatch:
    """Many unit ids as column-major UTF-16 code units, longest ids first, ready for FNV over all of them.

    Attributes:
        ids: the ids as given.
        missing: True where an id has no hash value (empty, or a JS-falsy non-string).
        order: batch position of the id at each sorted (longest first) position.
    """

    def __init__(self, ids: Sequence[Any]) -> None:
        self.ids = list(ids)
        texts, joined, missing = _hash_texts(self.ids)
        units, lengths = _utf16(texts, joined)
        self.missing = lengths == 0 if missing is None else missing
        self.order = np.argsort(-lengths, kind="stable")
        starts = (np.cumsum(lengths) - lengths)[self.order]
        longer_than = len(texts) - np.cumsum(np.bincount(lengths, minlength=1))  # ids longer than j
        wide = int(np.count_nonzero(longer_than >= VECTOR_MIN_IDS))  # non-increasing, so a prefix
        self.columns = [units[starts[: longer_than[j]] + j] for j in range(wide)]
        tail_ids = int(longer_than[wide]) if wide < len(longer_than) else 0
        self.tails = [
            (position, code_units(texts[self.order[position]])[wide:]) for position in range(tail_ids)
        ]
        self._value_states: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def fnv(self, state: np.ndarray) -> np.ndarray:
        """Continue FNV-1a from `state` (one per sorted position) over each id's code units, in place."""
        for column in self.columns:
            head = state[: len(column)]
            head ^= column
            head *= _PRIME  # uint32 arithmetic wraps mod 2**32 by itself
        for position, tail in self.tails:
            state[position] = fnv1a32_update(int(state[position]), tail)
        return state

    def value_states(self) -> np.ndarray:
        """FNV state after each id alone (sorted order): hash v1 hashes value + seed, so seeds share it."""
        if self._value_states is None:
            self._value_states = self.fnv(np.full(len(self), FNV_OFFSET_BASIS, dtype=np.uint32))
        return self._value_states

    def unsort(self, values: np.ndarray) -> np.ndarray:
        """Values per sorted position back in batch order, NaN where an id has no hash value."""
        out = np.empty(len(self), dtype=np.float64)
        out[self.order] = values
        out[self.missing] = np.nan
        return out


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
    """GrowthBook hash of every id in `batch` (float64 in [0, 1); NaN for ids with no hash value)."""
    with np.errstate(over="ignore"):
        if version == 1:
            state = _fnv_constant(batch.value_states(), seed)
            return batch.unsort((state % np.uint32(1000)).astype(np.float64) / 1000)
        if version == 2:
            state = batch.fnv(np.full(len(batch), fnv1a32(seed), dtype=np.uint32))
            return batch.unsort((_fnv_decimal(state) % np.uint32(10000)).astype(np.float64) / 10000)
    raise ValueError(f"unknown hash version {version}")


def choose_bulk(n: np.ndarray, ranges: Sequence[Sequence[float]]) -> np.ndarray:
    """Variation index per bucket value (-1 outside every range), like choose_variation."""
    out = np.full(n.shape, -1, dtype=np.int64)
    for i, (lo, hi) in enumerate(ranges):
        out[(out < 0) & (n >= lo) & (n < hi)] = i
    return out
