"""Rank's factored graph at load time: every item's share of the input layers computed once, then checked.

A package may carry ``factored/items.onnx`` and ``factored/rank.onnx`` (``models.factored``, docs/contracts.md):
the model's input layers split into a per-item part, computed here for every row of the item table, and a
per-user part that each Rank request computes once for its one user. Rank's candidates from the item table then
skip the item columns' share of the first layers: on the benchmark MMoE, 2-7% more requests/s at concurrency 16
and 4% less ORT CPU per lone request (benchmarks/results/serving_peers.md, "Rank's factored graph"). The parts
cost ``sum(widths) * 4`` bytes per item, capped by ``RuntimeSettings.factored_max_mb``.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from ranker_server.config import RuntimeSettings
from ranker_server.errors import PackageError
from ranker_server.features import ItemTable, build_rows, user_item_rows
from ranker_server.inference import GraphRows, OnnxRanker, session_options
from ranker_server.package import ModelPackage

logger = logging.getLogger(__name__)

FACTORED_INPUTS = ("user_sparse", "user_dense", "rows", "segment")  # besides the item parts
ITEM_CHUNK = 8192  # items per run when the parts are computed
_NO_INTS, _NO_FLOATS = np.zeros(0, np.int64), np.zeros(0, np.float32)  # no candidate features


def load_factored(
    package: ModelPackage, table: ItemTable, runner: OnnxRanker, runtime: RuntimeSettings, label: str
) -> OnnxRanker | None:
    """The factored graph fed with every item's parts, checked against ``runner`` (the package graph) on table
    rows; None when the package has none, on a GPU (the parts would cross to the device on every run), or when
    the parts need more than ``runtime.factored_max_mb``.

    Raises:
        PackageError: when a factored graph cannot be loaded or run, or answers otherwise than the package graph.
    """
    paths = package.factored_paths
    if paths is None or runner.on_gpu:
        return None
    items_path, rank_path = paths
    item_sparse, item_dense = table.item_columns
    try:
        items = ort.InferenceSession(
            str(items_path), session_options(runtime), providers=["CPUExecutionProvider"]
        )
        outputs = items.get_outputs()
        widths = [int(output.shape[1]) for output in outputs]
    # ORT raises its own untyped errors for corrupt graphs; a symbolic width is no int.
    except Exception as exc:
        raise PackageError(f"{items_path}: not an item-parts graph: {exc}") from exc
    megabytes = len(item_sparse) * sum(widths) * 4 / 2**20
    if megabytes > runtime.factored_max_mb:
        logger.warning(
            "%s: the item parts would take %.0f MB (--factored-max-mb %d): Rank uses the package graph",
            label, megabytes, runtime.factored_max_mb,
        )  # fmt: skip
        return None
    names = [output.name for output in outputs]
    try:
        chunks = []
        for start in range(0, len(item_sparse), ITEM_CHUNK):
            rows = slice(start, start + ITEM_CHUNK)
            chunks.append(
                items.run(names, {"item_sparse": item_sparse[rows], "item_dense": item_dense[rows]})
            )
    except Exception as exc:  # ORT errors are untyped
        raise PackageError(f"{items_path}: fails on the item table: {exc}") from exc
    parts = {name: np.concatenate([chunk[j] for chunk in chunks]) for j, name in enumerate(names)}
    factored = OnnxRanker(str(rank_path), runtime, f"{label} (factored)", FACTORED_INPUTS, parts)
    # The request path's own functions build both sides: 255 items of the table and an unknown id.
    ids, user_sparse, user_dense = sample_request(package, table, 256)
    inputs, _ = user_item_rows(package.layout, table, ids, user_sparse, user_dense)
    full = build_rows(package.layout, table, ids, user_sparse, user_dense, _NO_INTS, _NO_FLOATS)
    expected = runner.run(GraphRows(full.sparse, full.dense))
    factored.check(inputs, expected, runtime, f"{label}: the factored graph against the package graph")
    logger.info("%s: factored graph with the parts of %d items (%.0f MB)", label, len(item_sparse), megabytes)
    return factored


def sample_request(
    package: ModelPackage, table: ItemTable, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` candidate ids (the table's items in order, repeated if need be, and last an unknown id) and the golden
    inputs' first user's features: a Rank request for the factored graph's load-time check and warm-up."""
    ids = np.full(n, -1, np.int64)  # -1: unknown, the out-of-vocabulary row
    if len(table.ids):
        ids[:-1] = np.resize(table.ids, n - 1)
    layout = package.layout
    user_sparse = np.asarray(package.golden["sparse"], np.int64)[0, : layout.user_sparse]
    user_dense = np.asarray(package.golden["dense"], np.float32)[0, : layout.user_dense]
    return ids, user_sparse, user_dense
