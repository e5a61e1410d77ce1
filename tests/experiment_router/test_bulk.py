"""The vectorised path (assign_many, hash_bulk) is identical to the scalar one on awkward ids and attributes:
unicode beyond the BMP, lone surrogates, NUL characters (also trailing), empty and very long ids, numbers
and booleans as ids or hash attributes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from experiment_router import Router
from experiment_router.bulk import VECTOR_MIN_IDS, UnitBatch, hash_bulk
from experiment_router.hashing import hash_unit
from tests.experiment_router.helpers import base_config, experiment

AWKWARD = "a\x00é😀\ud800\udfffZ0 "  # ASCII, NUL, BMP, astral pair, lone surrogates, digit, space
ids_text = st.text(alphabet=st.sampled_from(AWKWARD), max_size=12) | st.text(max_size=8)
long_ids = st.builds(
    lambda c, n: c * n, st.sampled_from(["x", "é", "😀", "\x00", "ab\x00"]), st.integers(40, 3000)
)
id_lists = st.lists(ids_text | long_ids, max_size=70)
ordinary = [f"user-{i}" for i in range(VECTOR_MIN_IDS + 8)]  # enough ids to take the numpy columns


def _scalar(seed: str, ids: list[str], version: int) -> np.ndarray:
    return np.array([hash_unit(seed, i, version) if i else np.nan for i in ids], dtype=np.float64)


@settings(max_examples=80, deadline=None)
@given(ids=id_lists, pad=st.booleans(), seed=st.text(max_size=6), version=st.sampled_from([1, 2]))
def test_hash_bulk_equals_hash_unit(ids: list[str], pad: bool, seed: str, version: int) -> None:
    batch_ids = ids + ordinary if pad else ids
    got = hash_bulk(seed, UnitBatch(batch_ids), version)
    assert np.array_equal(got, _scalar(seed, batch_ids, version), equal_nan=True)


def test_trailing_nul_and_long_ids_keep_their_own_buckets() -> None:
    ids = ["a", "a\x00", "a\x00\x00", "\x00", "", "x" * 13_919, "x" * 13_918, *ordinary]
    for version in (1, 2):
        got = hash_bulk("seed", UnitBatch(ids), version)
        assert np.array_equal(got, _scalar("seed", ids, version), equal_nan=True)
    assert hash_unit("seed", "a\x00", 2) != hash_unit("seed", "a", 2)


def test_batch_memory_follows_total_code_units_not_the_longest_id() -> None:
    batch = UnitBatch(["x" * 13_919, *[f"user-{i}" for i in range(2000)]])
    held = sum(c.nbytes for c in batch.columns) + sum(len(t) for _, t in batch.tails)
    assert held < 2 * (13_919 + 2000 * 10)  # the padded matrix held 2001 x 13,919 x 4 bytes (111 MB)
    assert len(batch.tails) == 1 and len(batch.columns) <= 10


def _router() -> Router:
    data = base_config()
    data["holdout_groups"] = {"hg": {"coverage": 0.2, "hash_version": 1}}
    data["saved_groups"] = {"qa": ["\x00", "a\x00"]}
    data["experiments"] = [
        experiment(
            "ranked",
            layer={"name": "ranking", "range": [0.1, 0.9]},
            holdout="hg",
            coverage=0.8,
            forced={"treatment": ["\x00", "a\x00"], "control": ["😀"]},
        ),
        experiment(  # a layer's experiments hash one attribute: here the other layer's is not the user id
            "retrieved",
            stage="retrieval",
            hash_attribute="account",
            hash_version=1,
            condition={"user_id": {"$nin": ["é"]}},
            layer={"name": "retrieval", "range": [0, 0.5]},
        ),
        experiment(
            "by-account",
            stage="retrieval",
            hash_attribute="account",
            layer={"name": "retrieval", "range": [0.5, 1]},
        ),
    ]
    return Router.from_dict(data)


ROUTER = _router()


def _assert_bulk_matches_scalar(ids: list[Any], attributes: dict[str, Any]) -> None:
    bulk = ROUTER.assign_many(ids, attributes)
    for i, user in enumerate(ids):
        for a in ROUTER.assign(user, attributes):
            assert bulk[a.experiment_key][i] == a.variation_id, (user, attributes, a)


@settings(max_examples=60, deadline=None)
@given(ids=id_lists, pad=st.booleans())
def test_assign_many_equals_assign_on_awkward_ids(ids: list[str], pad: bool) -> None:
    _assert_bulk_matches_scalar(ids + ordinary if pad else ids, {})


def test_forced_entries_match_their_exact_id_only() -> None:
    ids = ["", "\x00", "a", "a\x00", "😀", *ordinary]
    bulk = ROUTER.assign_many(ids)["ranked"]
    assert bulk[1] == bulk[3] == 1 and bulk[4] == 0  # "\x00", "a\x00" forced into treatment, emoji control
    assert bulk[0] == -1  # "" has no hash value and is not "\x00"
    _assert_bulk_matches_scalar(ids, {})


json_numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
attribute_values = (
    json_numbers | st.booleans() | st.none() | ids_text | st.lists(st.integers(0, 9), max_size=2)
)


@settings(max_examples=60, deadline=None)
@given(account=attribute_values, ids=st.lists(json_numbers | st.booleans() | ids_text, max_size=40))
def test_numeric_and_boolean_ids_and_attributes_bucket_identically(account: Any, ids: list[Any]) -> None:
    _assert_bulk_matches_scalar(ids + ordinary, {"account": account})


def test_numbers_as_ids_hash_as_javascript_prints_them() -> None:
    ids = [2273199612178534537, 1e21, 1e-7, 0, False, True, math.nan, *ordinary]
    as_text = ["2273199612178534700", "1e+21", "1e-7", "", "", "true", "", *ordinary]
    for version in (1, 2):
        got = hash_bulk("s", UnitBatch(ids), version)
        assert np.array_equal(got, hash_bulk("s", UnitBatch(as_text), version), equal_nan=True)


def test_assign_many_reads_the_clock_like_assign_when_no_time_is_given() -> None:
    """An experiment with a start date: ``assign`` reads the clock, and ``assign_many`` took the epoch (0.0),
    which put every user outside it."""
    data = base_config()
    data["experiments"] = [experiment("dated", start="2024-01-01T00:00:00Z")]
    router = Router.from_dict(data)
    ids = [f"user-{i}" for i in range(200)]
    bulk = router.assign_many(ids)["dated"]
    assert (bulk >= 0).sum() == 200
    assert list(bulk) == [router.assign(u)[0].variation_id for u in ids]
