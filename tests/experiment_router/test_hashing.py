"""Bucketing primitives beyond the conformance file: UTF-16 ids, the decimal table, ramp-up stability."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from experiment_router.hashing import (
    bucket_ranges,
    choose_variation,
    code_units,
    fnv1a32,
    fnv1a32_decimal,
    hash_unit,
)


def _fnv_reference(units: list[int]) -> int:
    h = 0x811C9DC5
    for u in units:
        h = ((h ^ u) * 0x01000193) % 2**32
    return h


def test_non_ascii_ids_hash_utf16_code_units_like_the_js_sdk() -> None:
    # "é" is one BMP code unit; the emoji is a surrogate pair (0xD83D, 0xDE00) in JavaScript strings.
    assert list(code_units("é😀")) == [0xE9, 0xD83D, 0xDE00]
    assert fnv1a32("é😀") == _fnv_reference([0xE9, 0xD83D, 0xDE00])
    assert fnv1a32("é😀") != _fnv_reference([ord(c) for c in "é😀"])  # what code-point hashing would give


def test_decimal_prefix_table_matches_plain_fnv() -> None:
    rng = random.Random(7)
    values = [0, 9, 99_999, 100_000, 999_999, 1_000_000, 2**32 - 1] + [
        rng.getrandbits(32) for _ in range(3000)
    ]
    for n in values:
        assert fnv1a32_decimal(n) == fnv1a32(str(n)), n


def test_unknown_hash_version_gives_none() -> None:
    assert hash_unit("seed", "user", 3) is None


weights_strategy = st.lists(st.integers(min_value=1, max_value=100), min_size=2, max_size=5).map(
    lambda raw: [w / sum(raw) for w in raw]
)


@settings(max_examples=60, deadline=None)
@given(
    weights=weights_strategy,
    low=st.floats(min_value=0.0, max_value=1.0),
    high=st.floats(min_value=0.0, max_value=1.0),
    seed=st.text(min_size=1, max_size=8),
    version=st.sampled_from([1, 2]),
)
def test_raising_coverage_never_moves_a_bucketed_user(
    weights: list[float], low: float, high: float, seed: str, version: int
) -> None:
    low, high = sorted((low, high))
    before = bucket_ranges(len(weights), low, weights)
    after = bucket_ranges(len(weights), high, weights)
    for i in range(300):
        n = hash_unit(seed, f"user-{i}", version)
        was = choose_variation(n, before)
        if was >= 0:
            assert choose_variation(n, after) == was


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=4, max_size=4).map(sorted),
    grow=st.floats(min_value=0.0, max_value=1.0),
    which=st.integers(min_value=0, max_value=1),
)
def test_growing_a_variation_range_into_free_space_never_moves_a_user(
    cuts: list[float], grow: float, which: int
) -> None:
    """GrowthBook range rules: extend a variation's explicit range into unallocated space only."""
    a, b, c, d = cuts
    before = [(a, b), (c, d)]
    after = list(before)
    start, end = before[which]
    limit = c if which == 0 else 1.0  # up to the next variation's start, or the end of the space
    after[which] = (start, end + (limit - end) * grow)
    for i in range(300):
        n = hash_unit("ramp", f"user-{i}", 2)
        was = choose_variation(n, before)
        if was >= 0:
            assert choose_variation(n, after) == was
