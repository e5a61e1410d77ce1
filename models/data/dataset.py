"""In-memory tabular multi-task data in the model contract's layout, and its splits.

Columns are kept in the order the manifest promises: all user-side columns first, then item-side columns.
Sparse ids are already encoded with 0 reserved for out-of-vocabulary values.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd
import torch

from models.errors import DataError
from models.layers import FeatureSpec, TaskSpec

Side = Literal["user", "item"]
_SIDE_ORDER = {"user": 0, "item": 1}


@dataclass(frozen=True)
class TabularData:
    """Features, labels and column metadata of one data set (or one split of it)."""

    features: FeatureSpec
    tasks: tuple[TaskSpec, ...]
    sparse: np.ndarray  # int64 [N, S]
    dense: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # float32 [N, T]
    sparse_sides: tuple[Side, ...]
    dense_sides: tuple[Side, ...]
    item_id_column: str | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.sparse.shape != (n, self.features.n_sparse) or self.dense.shape != (n, self.features.n_dense):
            raise DataError(
                f"shape mismatch: sparse {self.sparse.shape}, dense {self.dense.shape}, labels {self.labels.shape}"
            )
        if self.labels.shape[1] != len(self.tasks):
            raise DataError(f"{self.labels.shape[1]} label columns for {len(self.tasks)} tasks")
        if len(self.sparse_sides) != self.features.n_sparse or len(self.dense_sides) != self.features.n_dense:
            raise DataError("one side (user|item) per column is required")
        for sides in (self.sparse_sides, self.dense_sides):
            if list(sides) != sorted(sides, key=_SIDE_ORDER.__getitem__):
                raise DataError(f"user-side columns must come before item-side columns, got {list(sides)}")
        _require_finite(self.dense, self.features.dense_names, "dense feature")
        _require_finite(self.labels, [t.name for t in self.tasks], "label")
        for t, task in enumerate(self.tasks):
            if task.type != "binary":
                continue
            outside = ~np.isin(self.labels[:, t], (0.0, 1.0))  # log-loss and AUC need 0/1 labels
            if outside.any():
                raise DataError(
                    f"label of binary task {task.name!r}: {int(outside.sum())} values outside {{0, 1}}, "
                    f"e.g. {self.labels[outside.argmax(), t]:g} at row {int(outside.argmax())}"
                )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> TabularData:
        return replace(self, sparse=self.sparse[index], dense=self.dense[index], labels=self.labels[index])

    def split(self, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> Splits:
        """Random split (the DML paper's 8:1:1 by default); the seed fixes the permutation."""
        train, val, test = split_indices(len(self), fractions, seed)
        return Splits(self.subset(train), self.subset(val), self.subset(test))

    def torch_batch(self, index: np.ndarray | slice | None = None) -> dict[str, torch.Tensor]:
        index = slice(None) if index is None else index
        return {"sparse": torch.from_numpy(self.sparse[index]), "dense": torch.from_numpy(self.dense[index])}

    def batches(
        self, batch_size: int, shuffle: bool, generator: np.random.Generator | None = None
    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        order = (
            (generator or np.random.default_rng()).permutation(len(self)) if shuffle else np.arange(len(self))
        )
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            yield self.torch_batch(index), torch.from_numpy(self.labels[index])

    def manifest_features(self) -> dict[str, list[dict[str, Any]]]:
        """The ``features`` block of a model manifest (contracts.md)."""
        spec = self.features
        return {
            "sparse": [
                {"name": n, "vocab_size": v, "side": s}
                for n, v, s in zip(spec.sparse_names, spec.sparse_vocab_sizes, self.sparse_sides, strict=True)
            ],
            "dense": [
                {"name": n, "side": s} for n, s in zip(spec.dense_names, self.dense_sides, strict=True)
            ],
        }

    def item_features(self) -> dict[str, np.ndarray] | None:
        """One row per distinct item id with its item-side columns (``item_features.npz``), if the data has items."""
        if self.item_id_column is None:
            return None
        id_col = self.features.sparse_names.index(self.item_id_column)
        ids, first = np.unique(self.sparse[:, id_col], return_index=True)
        item_sparse = [i for i, s in enumerate(self.sparse_sides) if s == "item"]
        item_dense = [i for i, s in enumerate(self.dense_sides) if s == "item"]
        return {
            "ids": ids.astype(np.int64),
            "sparse": self.sparse[first][:, item_sparse].astype(np.int64),
            "dense": self.dense[first][:, item_dense].astype(np.float32),
        }


@dataclass(frozen=True)
class Splits:
    train: TabularData
    val: TabularData
    test: TabularData

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            if len(getattr(self, name)) == 0:
                raise DataError(f"the {name} split is empty (no rows): nothing to train on or to evaluate")

    def full(self) -> TabularData:
        """All rows again (for item features); row order is train, val, test."""
        parts = (self.train, self.val, self.test)
        return replace(
            self.train,
            sparse=np.concatenate([p.sparse for p in parts]),
            dense=np.concatenate([p.dense for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
        )


def split_indices(
    n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of ``TabularData.split``'s train/val/test; loaders that fit statistics on the training rows
    before building the data (census standardisation) need them first."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9:
        raise DataError(f"split fractions must be three numbers summing to 1, got {list(fractions)}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def read_fields(source: Path | IO[str], name: str, names: Sequence[str], **read_csv: Any) -> pd.DataFrame:
    """A header-less delimited file whose every row has ``len(names)`` fields, as strings.

    pandas reads a row with one field too many by turning its first field into the index, which shifts every
    column by one without a word (a 5-field MovieLens rating became user 1's); a short row fills with NaN
    (or "" without NA parsing). Both are one-line errors naming the file (``name``) and the line here.
    """
    layout = f"{len(names)} fields ({', '.join(names)})" if len(names) <= 8 else f"{len(names)} fields"
    try:
        frame = pd.read_csv(source, header=None, dtype=str, **read_csv)
    except pd.errors.ParserError as exc:  # "Expected 4 fields in line 6, saw 5" from the C parser
        detail = str(exc).strip().removeprefix("Error tokenizing data. C error: ")
        raise DataError(f"{name}: {detail}; the layout is {layout}") from None
    if frame.shape[1] != len(names):
        raise DataError(f"{name}: {frame.shape[1]} fields per line, expected {layout}")
    last = frame.iloc[:, -1]
    short = (last.isna() | (last == "")).to_numpy()  # without NA parsing a missing field reads as ""
    if short.any():
        row = int(short.argmax())
        raise DataError(f"{name} row {row + 1}: no {names[-1]} field (the last one), expected {layout}")
    frame.columns = list(names)
    return frame


def _require_finite(values: np.ndarray, names: Sequence[str], what: str) -> None:
    """NaN or inf in one feature or label turns every weight NaN within a step, silently: refuse it here."""
    bad = ~np.isfinite(values)
    if bad.any():
        column = int(bad.any(axis=0).argmax())
        rows = bad[:, column]
        raise DataError(
            f"{what} column {names[column]!r}: {int(rows.sum())} NaN or infinite values "
            f"(first at row {int(rows.argmax())})"
        )


def float_column(frame: pd.DataFrame, name: str, dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
    """Column ``name`` as ``dtype``; a value that is not a number is an error naming the column."""
    try:
        return frame[name].to_numpy(dtype)
    except (TypeError, ValueError) as exc:
        raise DataError(f"column {name!r}: numbers expected ({exc})") from None


def user_then_item(n_user: int, n_item: int) -> tuple[Side, ...]:
    """The sides of ``n_user`` user-side columns followed by ``n_item`` item-side ones (TabularData's order)."""
    user: tuple[Side, ...] = ("user",)
    item: tuple[Side, ...] = ("item",)
    return user * n_user + item * n_item


def encode_categories(values: pd.Series) -> tuple[np.ndarray, int]:
    """Map each distinct value to 1..K (sorted for determinism), missing values to 0; returns ids, K + 1."""
    codes, uniques = pd.factorize(values, sort=True)
    return (codes + 1).astype(np.int64), len(uniques) + 1


def build_tabular(
    frame: pd.DataFrame,
    sparse: Sequence[tuple[str, Side]],
    dense: Sequence[tuple[str, Side]],
    tasks: Sequence[TaskSpec],
    label_columns: Sequence[str],
    embedding_dim: int = 8,
    item_id_column: str | None = None,
    integer_columns: Collection[str] = (),
    integer_shift: int = 0,
) -> TabularData:
    """Encode ``frame``'s columns into a TabularData.

    ``integer_columns`` already hold integer ids and keep them (plus ``integer_shift``, which must make every id
    >= 1 so that 0 stays out-of-vocabulary): raw MovieLens ids then stay the ids a ranker request carries.
    Every other sparse column is label-encoded.
    """
    sparse = sorted(sparse, key=lambda c: _SIDE_ORDER[c[1]])
    dense = sorted(dense, key=lambda c: _SIDE_ORDER[c[1]])
    ids, vocab = [], []
    for name, _ in sparse:
        if name in integer_columns:
            try:
                column = frame[name].astype(np.int64).to_numpy() + integer_shift
            except (TypeError, ValueError) as exc:  # missing (NaN) or non-numeric ids
                raise DataError(f"column {name!r}: integer ids expected ({exc})") from None
            if len(column) and column.min() < 1:
                raise DataError(f"column {name!r}: integer ids must be >= {1 - integer_shift}")
            ids.append(column)
            vocab.append(int(column.max()) + 1)
        else:
            column, size = encode_categories(frame[name])
            ids.append(column)
            vocab.append(size)
    n = len(frame)
    spec = FeatureSpec(
        sparse_vocab_sizes=tuple(vocab),
        n_dense=len(dense),
        embedding_dim=embedding_dim,
        sparse_names=tuple(c for c, _ in sparse),
        dense_names=tuple(c for c, _ in dense),
    )
    return TabularData(
        features=spec,
        tasks=tuple(tasks),
        sparse=np.stack(ids, axis=1) if ids else np.zeros((n, 0), np.int64),
        dense=(
            np.stack([float_column(frame, c) for c, _ in dense], axis=1)
            if dense
            else np.zeros((n, 0), np.float32)
        ),
        labels=np.stack([float_column(frame, c) for c in label_columns], axis=1),
        sparse_sides=tuple(s for _, s in sparse),
        dense_sides=tuple(s for _, s in dense),
        item_id_column=item_id_column,
    )
