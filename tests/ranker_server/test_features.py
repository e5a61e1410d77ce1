"""Feature assembly: item table lookup with out-of-vocabulary rows, widths, request overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ranker_server.errors import InvalidInput
from ranker_server.features import ItemTable, build_rows, in_vocab
from ranker_server.package import read_package
from tests.ranker_server.rank_packages import ITEM_DENSE, N_ITEMS, USER_DENSE, USER_VOCABS


@pytest.fixture(scope="module")
def package(repository: Path):
    return read_package(repository / "tiny" / "1")


def test_lookup_known_and_unknown_ids(package) -> None:
    table = ItemTable(package)
    ids = np.array([1005, 7, 1000 + N_ITEMS - 1, -3], np.int64)
    sparse, dense, oov = table.lookup(ids)
    assert oov == 2
    assert sparse.shape == (4, len(USER_VOCABS) + 1) and dense.shape == (4, USER_DENSE + ITEM_DENSE)
    assert not sparse[:, : len(USER_VOCABS)].any() and not dense[:, :USER_DENSE].any(), "user columns stay 0"
    assert sparse[:, -1].tolist() == [5, 0, (1000 + N_ITEMS - 1) % 100, 0]
    row = int(np.flatnonzero(package.item_ids == 1005)[0])
    np.testing.assert_array_equal(dense[0, USER_DENSE:], package.item_dense[row])
    np.testing.assert_array_equal(dense[1], np.zeros(USER_DENSE + ITEM_DENSE, np.float32))


def test_direct_and_searched_lookups_agree(package, monkeypatch: pytest.MonkeyPatch) -> None:
    import ranker_server.features as features

    direct = ItemTable(package)
    monkeypatch.setattr(features, "DIRECT_ID_LIMIT", 0)  # 8 x 80 items < the largest id 1079: binary search
    searched = ItemTable(package)
    assert direct._row_of is not None and searched._row_of is None
    ids = np.array([1005, 7, 1079, 1080, -3, -1, 0, 10**12, -(10**12), 1000, 1005, -(2**63), 2**63 - 1], np.int64)
    for a, b in zip(direct.lookup(ids), searched.lookup(ids), strict=True):
        np.testing.assert_array_equal(a, b)
    assert direct.lookup(ids)[2] == 9  # 7, 1080, -3, -1, 0 and the four far ids


def test_lookup_returns_fresh_rows(package) -> None:
    table = ItemTable(package)
    sparse, dense, _ = table.lookup(np.array([1005], np.int64))
    sparse[:] = 99
    dense[:] = 99.0
    again, dense_again, _ = table.lookup(np.array([1005], np.int64))
    assert again[0, -1] == 5 and dense_again[0, 0] == 0.0, "writing a request's rows must not touch the table"


def test_rows_put_user_columns_first_and_apply_overrides(package) -> None:
    table = ItemTable(package)
    ids = np.array([1001, 1002], np.int64)
    rows = build_rows(
        package.layout,
        table,
        ids,
        np.array([3, 4], np.int64),
        np.array([0.5], np.float32),
        np.array([9, 8], np.int64),
        np.zeros(0, np.float32),
    )
    assert rows.sparse.tolist() == [[3, 4, 9], [3, 4, 8]]
    assert rows.dense[:, 0].tolist() == [0.5, 0.5]
    assert rows.oov == 0


def test_out_of_range_ids_map_to_oov_index(package) -> None:
    rows = build_rows(
        package.layout,
        ItemTable(package),
        np.array([1001], np.int64),
        np.array([10_000, -1], np.int64),
        np.zeros(0, np.float32),
        np.array([100], np.int64),  # the item column's vocabulary is 100
        np.zeros(0, np.float32),
    )
    assert rows.sparse[0].tolist() == [0, 0, 0]


def test_in_vocab_maps_negative_and_too_large_ids_to_zero() -> None:
    values = np.array([[-(2**63), -1, 0], [99, 100, 2**63 - 1]], np.int64)
    assert in_vocab(values, np.array([100, 100, 100], np.int64)).tolist() == [[0, 0, 0], [99, 0, 0]]


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("user_sparse", {"user_sparse": np.array([1, 2, 3], np.int64)}),
        ("user_dense", {"user_dense": np.array([1.0, 2.0], np.float32)}),
        ("candidate_sparse", {"candidate_sparse": np.array([1, 2, 3], np.int64)}),
        ("candidate_dense", {"candidate_dense": np.array([1.0], np.float32)}),
    ],
)
def test_wrong_width_names_the_field(package, field: str, values: dict) -> None:
    args = {
        "user_sparse": np.zeros(0, np.int64),
        "user_dense": np.zeros(0, np.float32),
        "candidate_sparse": np.zeros(0, np.int64),
        "candidate_dense": np.zeros(0, np.float32),
        **values,
    }
    with pytest.raises(InvalidInput) as info:
        build_rows(package.layout, ItemTable(package), np.array([1001, 1002], np.int64), **args)
    assert info.value.field == field
