"""Loaders on small files in each real format, downloads through file:// URLs (never the network), and the
synthetic world's ground truth."""

import gzip
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.data import SyntheticConfig, SyntheticWorld, load_dataset
from models.data.alibaba import load_ali_ccp, load_aliexpress
from models.data.census import COLUMNS, load_census
from models.data.dataset import Splits, build_tabular
from models.data.download import RemoteFile, fetch
from models.data.movielens import load_movielens, load_movielens_1m
from models.data.multiflow import FLOWS, USE_CASES, MultiFlowWorld
from models.errors import DataError
from models.layers import TaskSpec

SHARED = Path("/work/shared/data")


def _ml1m(directory: Path, gz: bool) -> Path:
    directory.mkdir()
    (directory / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (directory / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Caf\u00e9 (1999)::Drama\n".encode("latin-1")
    )
    ratings = "".join(
        f"{u}::{m}::{r}::97830{i}\n" for i, (u, m, r) in enumerate([(1, 1, 5), (1, 2, 3), (2, 1, 4)] * 4)
    )
    if gz:
        (directory / "ratings.partial-users-1-2.dat.gz").write_bytes(gzip.compress(ratings.encode()))
    else:
        (directory / "ratings.dat").write_text(ratings)
    return directory


@pytest.mark.parametrize("gz", [False, True])
def test_movielens_1m_format(tmp_path: Path, gz: bool) -> None:
    data = load_movielens_1m(_ml1m(tmp_path / "ml", gz))
    assert len(data) == 12
    assert data.features.sparse_names == (
        "user_id",
        "gender",
        "age",
        "occupation",
        "zip",
        "item_id",
        "year",
        "genre",
    )
    assert data.sparse_sides == ("user",) * 5 + ("item",) * 3 and set(data.dense_sides) == {"item"}
    assert data.features.n_dense == 18
    np.testing.assert_array_equal(data.labels[:3], [[1, 5], [0, 3], [1, 4]])
    assert data.sparse[:3, 5].tolist() == [1, 2, 1]  # raw movie ids are kept: requests carry them
    items = data.item_features()
    assert (
        items["ids"].tolist() == [1, 2] and items["sparse"].shape == (2, 3) and items["dense"][1].sum() == 1
    )


def test_movielens_split_is_8_1_1_and_seeded(tmp_path: Path) -> None:
    a = load_movielens(_ml1m(tmp_path / "ml", False), seed=3)
    b = load_movielens(tmp_path / "ml", seed=3)
    assert (len(a.train), len(a.val), len(a.test)) == (10, 1, 1)
    np.testing.assert_array_equal(a.test.sparse, b.test.sparse)


def test_a_folder_of_neither_movielens_layout_names_both(tmp_path: Path) -> None:
    """An empty or wrong folder was read as ML-1M, so an ML-100k user was told ratings.dat was missing."""
    (tmp_path / "u.data").write_text("1\t2\t4\t881250949\n")  # ML-100k's ratings without u.user
    with pytest.raises(DataError, match=r"not a MovieLens folder: ML-1M has users.dat.*ML-100k has u.user") as e:
        load_movielens(tmp_path)
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in str(e.value)


def test_movielens_100k_format(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t2\t4\t881250949\n2\t1\t1\t881250950\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = ["0"] * 19
    item = "|".join(["1", "Toy Story (1995)", "01-Jan-1995", "", "http://x", *flags[:3], "1", *flags[4:]])
    item2 = "|".join(["2", "GoldenEye (1995)", "01-Jan-1995", "", "http://y", *flags[:1], "1", *flags[2:]])
    (tmp_path / "u.item").write_text(item + "\n" + item2 + "\n")
    from models.data.movielens import load_movielens_100k

    data = load_movielens_100k(tmp_path)
    np.testing.assert_array_equal(data.labels, [[1, 4], [0, 1]])
    assert data.features.n_dense == 19 and data.dense[0].sum() == 1


def test_missing_movielens_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ratings"):
        load_movielens_1m(tmp_path)


def test_census_format_and_split(tmp_path: Path) -> None:
    rows = []
    for i in range(30):
        values = [str(i % 7)] * len(COLUMNS)
        values[COLUMNS.index("marital_stat")] = "Never married" if i % 2 else "Divorced"
        values[COLUMNS.index("income_50k")] = "50000+." if i % 3 == 0 else "- 50000."
        rows.append(", ".join(values))
    (tmp_path / "census-income.test.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    splits = load_census(tmp_path, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 3, 3)
    full = splits.full()
    assert full.features.n_sparse == 32 and full.features.n_dense == 7
    assert "instance_weight" not in full.features.sparse_names + full.features.dense_names
    assert sorted(full.labels.sum(axis=0).tolist()) == [10.0, 15.0]


@pytest.mark.skipif(not (SHARED / "ali-ccp").exists(), reason="shared data not present")
def test_alibaba_sample_formats() -> None:
    ccp = load_ali_ccp(SHARED / "ali-ccp")
    assert (len(ccp.train), len(ccp.val), len(ccp.test)) == (100, 50, 50)
    assert ccp.train.labels[:, 0].sum() == 7 and ccp.train.labels[:, 1].sum() == 1
    assert ccp.train.sparse.min() >= 1 and ccp.train.features.n_dense == 8
    express = load_aliexpress(SHARED / "aliexpress")
    assert len(express.train) + len(express.val) == 100 and len(express.test) == 20
    assert express.train.features.n_sparse == 16 and express.train.features.n_dense == 63


def test_fetch_verifies_before_publishing(tmp_path: Path) -> None:
    source = tmp_path / "remote.bin"
    source.write_bytes(b"payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    good = RemoteFile(source.as_uri(), "data.bin", sha256=digest)
    target = fetch(good, tmp_path / "cache")
    assert target.read_bytes() == b"payload"
    assert fetch(good, tmp_path / "cache") == target  # cached copy is re-verified, not re-downloaded

    bad = RemoteFile(source.as_uri(), "other.bin", sha256="0" * 64)
    with pytest.raises(DataError, match="does not match"):
        fetch(bad, tmp_path / "cache")
    assert not (tmp_path / "cache" / "other.bin").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["data.bin"]
    with pytest.raises(DataError, match="no checksum"):
        fetch(RemoteFile(source.as_uri(), "unpinned.bin"), tmp_path / "cache")


def test_synthetic_ground_truth_drives_the_labels() -> None:
    world = SyntheticWorld(SyntheticConfig(n_users=30, n_items=20, seed=4))
    data = world.sample(20_000, seed=0)
    users, items = data.sparse[:, 0], data.sparse[:, 2]
    p = world.click_probability(users, items)
    assert abs(data.labels[:, 0].mean() - p.mean()) < 0.02
    assert np.corrcoef(data.labels[:, 1], world.expected_rating(users, items))[0, 1] > 0.8
    sparse, dense = world.features(users[:5], items[:5])
    np.testing.assert_array_equal(sparse, data.sparse[:5])
    np.testing.assert_array_equal(dense, data.dense[:5])
    assert SyntheticWorld(SyntheticConfig(n_users=30, n_items=20, seed=4)).affinity(
        users, items
    ) == pytest.approx(world.affinity(users, items))


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(
        DataError, match="known: ali-ccp, aliexpress, census, movielens, multiflow, synthetic"
    ):
        load_dataset("netflix", None)


def test_multiflow_world_is_seeded_and_its_tasks_depend_on_flow_and_use_case() -> None:
    world = MultiFlowWorld()
    a, b = world.sample(2000, seed=3), world.sample(2000, seed=3)
    assert np.array_equal(a.sparse, b.sparse) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, world.sample(2000, seed=4).labels)
    assert [t.name for t in a.tasks] == list(USE_CASES) and a.features.sparse_names[0] == "flow"
    flows = np.bincount(a.sparse[:, 0], minlength=len(FLOWS) + 1)[1:] / len(a)
    assert flows.min() > 0.05 and flows.max() - flows.min() > 0.1  # every flow present, imbalanced
    # the same user x item in another flow has other logits: the flow is part of the task
    other = a.sparse.copy()
    other[:, 0] = other[:, 0] % len(FLOWS) + 1
    assert np.abs(world.logits(a.sparse, a.dense) - world.logits(other, a.dense)).mean() > 0.5
    # every (flow, use case) task has its own weights over the ground-truth skills
    weights = world.weights.reshape(len(FLOWS) * len(USE_CASES), -1)
    assert len({tuple(w.round(6)) for w in weights}) == len(weights)
    assert set(np.unique(a.labels)) == {0.0, 1.0} and 0.05 < a.labels.mean() < 0.5


def test_multiflow_loader_needs_no_path() -> None:
    splits = load_dataset("multiflow", None, seed=0)
    assert len(splits.train) == 120_000 and len(splits.val) == len(splits.test) == 15_000


def test_bad_values_are_errors_naming_the_column() -> None:
    """NaN/inf features or labels, or binary labels other than 0/1, trained a NaN or wrong model quietly."""
    data = SyntheticWorld(SyntheticConfig(n_users=30, n_items=20)).sample(50)
    dense, labels = data.dense.copy(), data.labels.copy()
    dense[7, 1] = np.inf
    with pytest.raises(DataError, match=r"dense feature column 'user_dense_1': 1 NaN or infinite .*row 7"):
        replace(data, dense=dense)
    labels[3, 1] = np.nan
    with pytest.raises(DataError, match="label column 'rating': 1 NaN or infinite"):
        replace(data, labels=labels)
    labels[3, 1], labels[4, 0] = 3.0, 2.0
    with pytest.raises(DataError, match=r"binary task 'click': 1 values outside \{0, 1\}, e.g. 2 at row 4"):
        replace(data, labels=labels)
    labels[4, 0] = 0.0
    labels[:, 1] = 7.5  # regression labels may be any finite number
    assert replace(data, labels=labels).labels[0, 1] == 7.5


def test_unreadable_columns_are_errors_naming_the_column() -> None:
    """A missing or non-numeric value in a CSV column raised a pandas/numpy traceback naming no column."""
    frame = pd.DataFrame({"item": [1.0, np.nan], "price": [1.5, 2.0], "click": [1.0, 0.0]})
    tasks = [TaskSpec("click")]
    with pytest.raises(DataError, match="column 'item': integer ids expected"):
        build_tabular(frame, [("item", "item")], [], tasks, ["click"], integer_columns={"item"})
    frame["price"] = ["1.5", "cheap"]
    with pytest.raises(DataError, match="column 'price': numbers expected"):
        build_tabular(frame, [("item", "item")], [("price", "item")], tasks, ["click"])


def test_an_empty_split_is_an_error() -> None:
    """An empty validation split scored every epoch NaN (early stopping kept epoch 0) without a word."""
    data = SyntheticWorld(SyntheticConfig(n_users=30, n_items=20)).sample(20)
    with pytest.raises(DataError, match="the test split is empty"):
        Splits(data, data, data.subset(np.arange(0)))
    with pytest.raises(DataError, match="the val split is empty"):
        data.subset(np.arange(3)).split((0.8, 0.1, 0.1))  # 3 rows: round(0.8 * 3) = 2 train, 0 val, 1 test


def _census_rows(n: int, offset: int) -> list[str]:
    """``n`` census rows whose continuous columns all hold ``offset + i`` (label columns alternate)."""
    rows = []
    for i in range(n):
        values = [str(offset + i)] * len(COLUMNS)
        values[COLUMNS.index("marital_stat")] = "Never married" if i % 2 else "Divorced"
        values[COLUMNS.index("income_50k")] = "50000+." if i % 3 == 0 else "- 50000."
        rows.append(", ".join(values))
    return rows


def test_census_dense_columns_use_the_training_rows_statistics(tmp_path: Path) -> None:
    """The mean and deviation came from every loaded row, validation and test included (train mean 0.3)."""
    test_only = tmp_path / "test-only"
    test_only.mkdir()
    (test_only / "census-income.test").write_text(
        "\n".join(_census_rows(40, 0) + _census_rows(10, 5000)) + "\n"
    )
    splits = load_census(test_only, seed=2)
    np.testing.assert_allclose(splits.train.dense.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(splits.train.dense.std(axis=0, ddof=1), 1.0, atol=1e-6)

    both = tmp_path / "both"
    both.mkdir()
    (both / "census-income.data").write_text("\n".join(_census_rows(20, 0)) + "\n")
    (both / "census-income.test").write_text("\n".join(_census_rows(20, 1000)) + "\n")
    splits = load_census(both, seed=0)
    train_log = np.log1p(np.arange(20.0))
    expected = (np.log1p(np.arange(1000.0, 1020.0)) - train_log.mean()) / train_log.std(ddof=1)
    got = np.concatenate([splits.val.dense[:, 0], splits.test.dense[:, 0]])
    np.testing.assert_allclose(np.sort(got), expected, rtol=1e-5)


def test_rows_of_the_wrong_layout_are_errors_naming_the_file(tmp_path: Path) -> None:
    """pandas turned a row's extra first field into the index: a 5-field rating by user 7 loaded as user 1's
    (and a census file of 43 fields shifted every column); one 43-field row was a ParserError traceback."""
    ml = _ml1m(tmp_path / "ml", False)
    (ml / "ratings.dat").write_text("7::1::1::5::978300760\n")
    with pytest.raises(
        DataError, match=r"ratings.dat: 5 fields per line, expected 4 fields \(user_id, item_id"
    ):
        load_movielens_1m(ml)
    (ml / "ratings.dat").write_text("1,1,5,978300760\n")  # a CSV: was "ratings refer to users ... missing"
    with pytest.raises(DataError, match=r"ratings.dat: 1 fields per line, expected 4"):
        load_movielens_1m(ml)
    (ml / "ratings.dat").write_text("1::1::5::978300760\n1::2::3\n")
    with pytest.raises(
        DataError, match=r"ratings.dat row 2: no timestamp field \(the last one\), expected 4"
    ):
        load_movielens_1m(ml)
    (ml / "ratings.dat").write_text("1::1::five::978300760\n")
    with pytest.raises(DataError, match="column 'rating': numbers expected"):
        load_movielens_1m(ml)

    census = tmp_path / "census"
    census.mkdir()
    rows = _census_rows(10, 0)
    (census / "census-income.test").write_text("\n".join(f"x, {r}" for r in rows) + "\n")
    with pytest.raises(DataError, match=r"census-income.test: 43 fields per line, expected 42 fields"):
        load_census(census)
    rows[5] += ", x"
    (census / "census-income.test").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"census-income.test: Expected 42 fields in line 6, saw 43"):
        load_census(census)
    rows[5] = _census_rows(10, 0)[5].replace("5, ", "five, ", 1)
    (census / "census-income.test").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="column 'age': numbers expected"):
        load_census(census)


def test_missing_files_name_their_official_address(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"census-income.test\(.gz\) not found \(official file: https://archive"
    ):
        load_census(tmp_path)
    ml = _ml1m(tmp_path / "ml", False)
    (ml / "ratings.dat").unlink()
    with pytest.raises(DataError, match=r"none of .* found \(official archive: https://files.grouplens.org/"):
        load_movielens_1m(ml)
    (ml / "movies.dat").unlink()
    (ml / "ratings.dat").write_text("1::1::5::978300760\n")
    with pytest.raises(DataError, match=r"movies.dat \(official archive: .*/ml-1m.zip\)"):
        load_movielens_1m(ml)
    with pytest.raises(DataError, match=r"ali_ccp_train_sample.csv \(official file: https://raw.github"):
        load_ali_ccp(tmp_path)


def test_a_sample_file_without_a_label_column_names_file_and_column(tmp_path: Path) -> None:
    """A KeyError: 'conversion' traceback named neither the file nor what was expected."""
    columns = ["search_id", "categorical_1", "numerical_1", "click"]
    frame = pd.DataFrame(np.ones((20, len(columns)), int), columns=columns)
    frame.to_csv(tmp_path / "aliexpress_train_sample.csv", index=False)
    frame.to_csv(tmp_path / "aliexpress_test_sample.csv", index=False)
    with pytest.raises(DataError, match=r"aliexpress_train_sample.csv: missing column\(s\) conversion"):
        load_aliexpress(tmp_path)
