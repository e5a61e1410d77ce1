"""Builds the model's input rows: user columns from the request, item columns from the package's table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ranker_server.errors import InvalidInput
from ranker_server.package import FeatureLayout, ModelPackage


@dataclass(frozen=True)
class FeatureRows:
    """One row per candidate, ready for the ONNX graph; ``oov`` counts ids the item table did not know."""

    sparse: np.ndarray  # int64[N, S]
    dense: np.ndarray  # float32[N, D]
    oov: int


class ItemTable:
    """Sorted-id lookup of item-side features; unknown ids map to an all-zero (out-of-vocabulary) row."""

    def __init__(self, package: ModelPackage) -> None:
        order = np.argsort(package.item_ids, kind="stable")
        self._ids = package.item_ids[order]
        # Row N (one past the last item) is the out-of-vocabulary row: sparse index 0, dense zeros.
        self._sparse = np.vstack(
            [package.item_sparse[order], np.zeros((1, package.layout.item_sparse), np.int64)]
        )
        self._dense = np.vstack(
            [package.item_dense[order], np.zeros((1, package.layout.item_dense), np.float32)]
        )

    def lookup(self, candidate_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Item sparse and dense rows for ``candidate_ids`` and the number of unknown ids."""
        n = len(self._ids)
        if n == 0:
            rows = np.zeros(len(candidate_ids), np.int64)
        else:
            pos = np.searchsorted(self._ids, candidate_ids)
            pos_clipped = np.minimum(pos, n - 1)
            rows = np.where(self._ids[pos_clipped] == candidate_ids, pos_clipped, n)
        oov = int(np.count_nonzero(rows == n))
        return self._sparse[rows], self._dense[rows], oov


def build_rows(
    layout: FeatureLayout,
    table: ItemTable,
    candidate_ids: np.ndarray,
    user_sparse: np.ndarray,
    user_dense: np.ndarray,
    candidate_sparse: np.ndarray,
    candidate_dense: np.ndarray,
) -> FeatureRows:
    """Assemble ``[N, S]`` / ``[N, D]`` inputs, checking every width against the model's layout.

    Empty user features mean "unknown user" (out-of-vocabulary ids, zero dense values): a client cannot
    know which variant, and so which model's layout, it will be assigned. Out-of-range sparse ids map to the
    out-of-vocabulary index 0.

    Raises:
        InvalidInput: naming the request field whose width does not match the model.
    """
    n = len(candidate_ids)
    user_sparse = _width("user_sparse", user_sparse, layout.user_sparse, np.int64)
    user_dense = _width("user_dense", user_dense, layout.user_dense, np.float32)
    item_sparse, item_dense, oov = table.lookup(candidate_ids)
    if candidate_sparse.size:
        item_sparse = _matrix("candidate_sparse", candidate_sparse, n, layout.item_sparse, np.int64)
    if candidate_dense.size:
        item_dense = _matrix("candidate_dense", candidate_dense, n, layout.item_dense, np.float32)
    sparse = np.empty((n, layout.user_sparse + layout.item_sparse), np.int64)
    sparse[:, : layout.user_sparse] = user_sparse
    sparse[:, layout.user_sparse :] = item_sparse
    dense = np.empty((n, layout.user_dense + layout.item_dense), np.float32)
    dense[:, : layout.user_dense] = user_dense
    dense[:, layout.user_dense :] = item_dense
    if sparse.size:
        sparse[(sparse < 0) | (sparse >= layout.vocab_sizes)] = 0
    return FeatureRows(sparse=sparse, dense=dense, oov=oov)


def _width(field: str, values: np.ndarray, width: int, dtype: type) -> np.ndarray:
    if values.size == 0:
        return np.zeros(width, dtype)
    if values.size != width:
        raise InvalidInput(field, f"has {values.size} values, the assigned model expects {width}")
    return values.astype(dtype, copy=False)


def _matrix(field: str, values: np.ndarray, rows: int, width: int, dtype: type) -> np.ndarray:
    if width == 0 or values.size != rows * width:
        raise InvalidInput(
            field,
            f"has {values.size} values, expected len(candidate_ids) x {width} = {rows * width} (row-major)",
        )
    return values.astype(dtype, copy=False).reshape(rows, width)
