"""GrowthBook-compatible bucketing primitives: pure functions, no I/O, no clock, no global state.

Unit ids are hashed per UTF-16 code unit, as GrowthBook's SDKs do (JavaScript, and Python since 4.0.0):
an ASCII or BMP character contributes its code point, a character outside the BMP (emoji, rare CJK)
contributes its two surrogates, a lone surrogate itself.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

FNV_OFFSET_BASIS = 0x811C9DC5
FNV_PRIME = 0x01000193
_MASK32 = 0xFFFFFFFF

BucketRange = tuple[float, float]


def code_units(text: str) -> bytes | Sequence[int]:
    """Return the UTF-16 code units of `text` as a sequence of ints (bytes for pure ASCII, the fast path).

    A lone surrogate (valid in a JavaScript string, and in a Python one) is one code unit, as in JS.
    """
    if text.isascii():
        return text.encode("ascii")
    return memoryview(text.encode("utf-16-le", "surrogatepass")).cast("H").tolist()


def fnv1a32_update(state: int, units: bytes | Sequence[int]) -> int:
    """Continue an FNV-1a 32 hash from `state` over `units`; lets callers precompute a shared prefix."""
    for unit in units:
        state = ((state ^ unit) * FNV_PRIME) & _MASK32
    return state


def fnv1a32(text: str) -> int:
    """FNV-1a 32-bit hash of `text` over its UTF-16 code units."""
    return fnv1a32_update(FNV_OFFSET_BASIS, code_units(text))


_LOW_DIGITS = 4
_LOW_MOD = 10**_LOW_DIGITS
# The last four decimal digits of every n, zero-padded, as ASCII bytes (index n % 10**4).
LOW_DIGIT_UNITS = tuple(str(i).zfill(_LOW_DIGITS).encode("ascii") for i in range(_LOW_MOD))


@lru_cache(maxsize=1)
def decimal_high_states() -> array:
    """FNV state after the decimal string of every `n // 10**4` of a 32-bit n (430k entries, 1.7 MB).

    Hash v2's second round hashes the decimal string of a 32-bit number: `str(n)` is `str(n // 10**4)`
    followed by the last four digits zero-padded, so one table lookup replaces six of its ten steps.
    """
    high = np.arange(_MASK32 // _LOW_MOD + 1, dtype=np.uint64)
    ndigits = np.maximum(np.floor(np.log10(np.maximum(high, 1))).astype(np.int64) + 1, 1)
    states = np.full(high.shape, FNV_OFFSET_BASIS, dtype=np.uint64)
    for position in range(int(ndigits.max())):
        live = ndigits > position
        digit = (
            high // np.uint64(10) ** np.clip(ndigits - 1 - position, 0, None).astype(np.uint64)
        ) % np.uint64(10)
        stepped = ((states ^ (digit + np.uint64(ord("0")))) * np.uint64(FNV_PRIME)) & np.uint64(_MASK32)
        states = np.where(live, stepped, states)
    return array("I", states.astype(np.uint32).tobytes())


def fnv1a32_decimal(n: int) -> int:
    """FNV-1a 32 of `str(n)` for 0 <= n < 2**32, using the high-digits table."""
    if n < _LOW_MOD:
        return fnv1a32_update(FNV_OFFSET_BASIS, str(n).encode("ascii"))
    state = decimal_high_states()[n // _LOW_MOD]
    for unit in LOW_DIGIT_UNITS[n % _LOW_MOD]:
        state = ((state ^ unit) * FNV_PRIME) & _MASK32
    return state


def hash_unit(seed: str, value: str, version: int) -> float | None:
    """Map (seed, unit id) to [0, 1) as GrowthBook does.

    Args:
        seed: the experiment seed (GrowthBook falls back to the experiment key).
        value: the unit id (value of the hash attribute).
        version: 1 (value + seed, 3 decimals) or 2 (double hash, 4 decimals).

    Returns:
        The bucket in [0, 1), or None for an unknown hash version.
    """
    if version == 2:
        return (fnv1a32_decimal(fnv1a32(seed + value)) % 10000) / 10000
    if version == 1:
        return (fnv1a32(value + seed) % 1000) / 1000
    return None


def in_range(n: float, bucket_range: Sequence[float]) -> bool:
    """Half-open range test start <= n < end."""
    return bucket_range[0] <= n < bucket_range[1]


def in_namespace(unit_id: str, namespace: Sequence) -> bool:
    """Whether `unit_id` falls in namespace (id, start, end); hashed with v1 and seed "__" + id.

    A namespace with fewer than three entries holds nobody: JavaScript compares with `undefined` there.
    """
    if len(namespace) < 3:
        return False
    n = hash_unit("__" + namespace[0], unit_id, 1)
    if n is None:
        return False
    return namespace[1] <= n < namespace[2]


def equal_weights(num_variations: int) -> list[float]:
    """Equal weights for `num_variations` variations (empty for fewer than one)."""
    if num_variations < 1:
        return []
    return [1 / num_variations] * num_variations


def bucket_ranges(
    num_variations: int, coverage: float = 1.0, weights: Sequence[float] | None = None
) -> list[BucketRange]:
    """Variation ranges [start, start + coverage * weight) over cumulative weights.

    Lowering coverage shrinks each range from its end, so no user ever moves to another variation;
    weights fall back to equal ones when their count is wrong or their sum is outside [0.99, 1.01].
    """
    coverage = min(max(coverage, 0.0), 1.0)
    if weights is None or len(weights) != num_variations:
        weights = equal_weights(num_variations)
    total = sum(weights)
    if total < 0.99 or total > 1.01:
        weights = equal_weights(num_variations)
    ranges: list[BucketRange] = []
    cumulative = 0.0
    for weight in weights:
        start = cumulative
        cumulative += weight
        ranges.append((start, start + coverage * weight))
    return ranges


def choose_variation(n: float, ranges: Sequence[Sequence[float]]) -> int:
    """Index of the range holding `n`, or -1 when it falls in none (outside coverage)."""
    for index, bucket_range in enumerate(ranges):
        if bucket_range[0] <= n < bucket_range[1]:
            return index
    return -1
