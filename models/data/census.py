"""UCI Census-Income (KDD) loader in the MMoE/CSRec two-task setting.

Tasks: ``income`` (> 50K, binary) and ``never_married`` (marital status "Never married", binary). Both label
columns and ``instance weight`` are removed from the features. Seven continuous columns are dense
(log1p then standardised with the training rows' mean and deviation), the other 32 are categorical.

Splits: with the official training file present, it is the training set and the test file is halved into
validation and test (the MMoE protocol). With only the test file (as in ``shared/data``), the test file is
split 8:1:1 at random with a fixed seed: numbers from that split are not comparable to the papers'.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from models.data.dataset import Splits, TabularData, build_tabular, float_column, read_fields, split_indices
from models.data.download import RemoteFile, fetch
from models.errors import DataError
from models.layers import TaskSpec

logger = logging.getLogger(__name__)

_UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld"
# sha256 of the test file as copied into shared/data (byte-identical to the UCI archive copy in keras-mmoe);
# the training file's digest could not be pinned offline, so downloading it is refused until it is.
CENSUS_TEST = RemoteFile(
    f"{_UCI}/census-income.test.gz",
    "census-income.test.gz",
    sha256="5ac4cacd3ca9f1ecb10de1a0a41e4ac68fdc419e3fec190f5c0c6cc03b2ea659",
)
CENSUS_TRAIN = RemoteFile(f"{_UCI}/census-income.data.gz", "census-income.data.gz")

COLUMNS = [
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
    "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends", "tax_filer_stat",
    "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa",
    "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp", "fam_under_18", "country_father",
    "country_mother", "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits",
    "weeks_worked", "year", "income_50k",
]  # fmt: skip
CONTINUOUS = [
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "num_emp",
    "weeks_worked",
]
TASKS = (TaskSpec("income", "binary"), TaskSpec("never_married", "binary"))


def read_census_file(path: Path) -> pd.DataFrame:
    """One raw census file (gzipped or not) with the 42 named columns."""
    if not path.exists():
        raise DataError(f"missing census file {path} (official file: {CENSUS_TEST.url})")
    return read_fields(path, str(path), COLUMNS, skipinitialspace=True)


def census_tabular(
    frame: pd.DataFrame, embedding_dim: int = 8, train_rows: np.ndarray | None = None
) -> TabularData:
    """Encode the census columns; the dense ones are standardised with ``train_rows``' statistics (all rows
    when None), so that validation and test rows do not shape the features a model is trained on."""
    frame = frame.copy()
    frame["income"] = frame["income_50k"].str.startswith("50000+").astype(np.float32)
    frame["never_married"] = (frame["marital_stat"] == "Never married").astype(np.float32)
    fit = slice(None) if train_rows is None else train_rows
    for column in CONTINUOUS:
        values = np.log1p(float_column(frame, column, np.float64).clip(min=0))
        std = values[fit].std(ddof=1) if values[fit].size > 1 else 0.0
        frame[column] = ((values - values[fit].mean()) / (std or 1.0)).astype(np.float32)
    categorical = [
        c for c in COLUMNS if c not in {*CONTINUOUS, "instance_weight", "marital_stat", "income_50k"}
    ]
    return build_tabular(
        frame,
        sparse=[(c, "user") for c in categorical],
        dense=[(c, "user") for c in CONTINUOUS],
        tasks=TASKS,
        label_columns=["income", "never_married"],
        embedding_dim=embedding_dim,
    )


def load_census(path: Path | str, seed: int = 0, embedding_dim: int = 8) -> Splits:
    """``path`` is a directory holding ``census-income.test(.gz)`` and optionally ``census-income.data(.gz)``."""
    directory = Path(path)

    def find(stem: str) -> Path | None:
        return next((p for p in (directory / stem, directory / f"{stem}.gz") if p.exists()), None)

    test_file, train_file = find("census-income.test"), find("census-income.data")
    if test_file is None:
        raise DataError(f"{directory}: census-income.test(.gz) not found (official file: {CENSUS_TEST.url})")
    test = read_census_file(test_file)
    if train_file is None:
        logger.info(
            "census: only the test file is present; splitting its %d rows 8:1:1 (seed %d)", len(test), seed
        )
        rows = split_indices(len(test), (0.8, 0.1, 0.1), seed)
        data = census_tabular(test, embedding_dim, train_rows=rows[0])
        return Splits(*(data.subset(r) for r in rows))
    train = read_census_file(train_file)
    n_train = len(train)
    data = census_tabular(pd.concat([train, test], ignore_index=True), embedding_dim, np.arange(n_train))
    halves = np.random.default_rng(seed).permutation(len(test)) + n_train
    return Splits(
        data.subset(np.arange(n_train)),
        data.subset(halves[: len(test) // 2]),
        data.subset(halves[len(test) // 2 :]),
    )


def download_census(directory: Path | str, include_train: bool = False) -> Path:
    """Fetch the test file (and, once its digest is pinned, the training file) from UCI."""
    fetch(CENSUS_TEST, Path(directory))
    if include_train:
        fetch(CENSUS_TRAIN, Path(directory))
    return Path(directory)
