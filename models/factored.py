"""Rank's factored graphs: the model's input layers split into a per-user part and a per-item part.

A Rank request scores one user against many candidates whose features come from the package's item table. Every
``nn.Linear`` that reads the concatenated features ``x = [user columns, item columns]`` directly computes
``x W^T + b = (x_user W_user^T + b) + x_item W_item^T``: the item part can be computed once per item when the
server loads the package (``ITEMS_FILE``), and a request computes only its user's part, once, and adds the
item parts of its candidates by row (``RANK_FILE``). On bench_ranker's MMoE (first layers 72 -> 1,036 wide) that
was 0.90-0.93x of ONNX Runtime's CPU per batched run and -0.1 to -0.2 ms per lone 500-candidate run
(benchmarks/results/tried/first_layer_factoring.py, the measurement that led here).

Which layers read ``x`` is found by running the model once with hooks, not declared per family. A family whose
``x`` also feeds something else (a wide part, attention over the embeddings) gets no factored graphs: the
factored forward puts NaN where ``x`` would be, so any other reader shows up as NaN in the parity check that
every export runs. The item parts hold ``sum(out_features)`` floats per item (4 KB per item for that MMoE).
"""

from __future__ import annotations

import copy
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from models.base import MultiTaskModel
from models.errors import PackageError
from models.layers import FeatureEmbedding, typed_modules
from models.package import PARITY_ATOL, PARITY_RTOL, parity_gap

logger = logging.getLogger(__name__)

ITEMS_FILE = "factored/items.onnx"  # item_sparse, item_dense -> item_part_0 .. item_part_{m-1}
RANK_FILE = "factored/rank.onnx"  # user_sparse, user_dense, item_part_*, rows, segment -> logits
PART = "item_part_{}"


@dataclass(frozen=True)
class SideLayout:
    """How many sparse and dense columns are user-side; the user columns come first in each group."""

    user_sparse: int
    item_sparse: int
    user_dense: int
    item_dense: int

    @classmethod
    def from_features(cls, features: dict) -> SideLayout | None:
        """From a manifest's feature block; None when user columns do not all precede item columns."""
        counts = []
        for group in ("sparse", "dense"):
            sides = [f["side"] for f in features.get(group, [])]
            users = sides.count("user")
            if sides != ["user"] * users + ["item"] * (len(sides) - users):
                return None
            counts += [users, len(sides) - users]
        return cls(*counts)

    def columns(self, side: str, embedding_dim: int) -> tuple[range, Tensor]:
        """The sparse columns of ``side`` ("user" or "item") and the columns of ``x`` they and its dense columns
        fill (``x`` = every sparse column's embedding, then the dense columns)."""
        e, sparse = embedding_dim, self.user_sparse + self.item_sparse
        if side == "user":
            first, dense = range(self.user_sparse), range(sparse * e, sparse * e + self.user_dense)
        else:
            first, dense = (
                range(self.user_sparse, sparse),
                range(sparse * e + self.user_dense, sparse * e + self.user_dense + self.item_dense),
            )
        embedded = range(first.start * e, first.stop * e)
        return first, torch.tensor([*embedded, *dense], dtype=torch.int64)


@dataclass(frozen=True)
class InputLayer:
    """A Linear that reads the output of ``embedding`` and nothing else."""

    linear: nn.Linear
    embedding: FeatureEmbedding


def input_layers(model: MultiTaskModel) -> list[InputLayer]:
    """The Linears that read a FeatureEmbedding's output directly, in call order ([] when any of them also
    reads something else: its output could not be replaced by a precomputed one)."""
    produced: list[tuple[Tensor, FeatureEmbedding]] = []
    sources: dict[nn.Linear, set[FeatureEmbedding | None]] = {}

    def after_embedding(module: nn.Module, args: tuple, output: Tensor) -> None:
        if isinstance(module, FeatureEmbedding):  # hooked on those only
            produced.append((output, module))

    def before_linear(module: nn.Module, args: tuple) -> None:
        source = next((emb for out, emb in produced if args[0] is out), None)
        if isinstance(module, nn.Linear):  # hooked on those only
            sources.setdefault(module, set()).add(source)

    hooks = [
        m.register_forward_hook(after_embedding) for m in model.modules() if isinstance(m, FeatureEmbedding)
    ]
    hooks += [m.register_forward_pre_hook(before_linear) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        spec = model.feature_spec
        batch = {
            "sparse": torch.zeros((2, spec.n_sparse), dtype=torch.int64),
            "dense": torch.zeros((2, spec.n_dense)),
        }
        with torch.no_grad():
            model.eval()(batch)
    finally:
        for hook in hooks:
            hook.remove()
    layers = []
    for linear, found in sources.items():
        if len(found) > 1:
            return []
        source = next(iter(found))
        if source is not None:  # None: it reads something else only
            layers.append(InputLayer(linear, source))
    return layers


class _SidePart(nn.Module):
    """One side's columns (user or item) -> its share of every input layer: ``x_side W_side^T`` per layer."""

    def __init__(self, layers: list[InputLayer], sides: SideLayout, side: str) -> None:
        super().__init__()
        embeddings = list(dict.fromkeys(layer.embedding for layer in layers))
        # The model's own modules; only the side's tables are used, so only they reach the exported graph.
        self.embeddings = nn.ModuleList(embeddings)
        self.sources = [embeddings.index(layer.embedding) for layer in layers]
        self.sparse_columns, x_columns = sides.columns(side, layers[0].embedding.spec.embedding_dim)
        self.weights = [layer.linear.weight.detach()[:, x_columns].T.contiguous() for layer in layers]

    def forward(self, sparse: Tensor, dense: Tensor) -> list[Tensor]:
        # ``dense`` even when it has no columns: a graph input that nothing reads would be dropped by the exporter
        embeddings = typed_modules(self.embeddings, FeatureEmbedding)
        xs = [embedding.embed(sparse, dense, self.sparse_columns) for embedding in embeddings]
        return [xs[source] @ weight for source, weight in zip(self.sources, self.weights, strict=True)]


class ItemParts(nn.Module):
    """``item_sparse [N, S_item]``, ``item_dense [N, D_item]`` -> one ``[N, out]`` part per input layer (no bias)."""

    def __init__(self, layers: list[InputLayer], sides: SideLayout) -> None:
        super().__init__()
        self.items = _SidePart(layers, sides, "item")

    def forward(self, item_sparse: Tensor, item_dense: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.items(item_sparse, item_dense))


class _Given(nn.Module):
    """Stands in for an input layer: returns the pre-activation the factored forward computed for it."""

    def __init__(self, values: list[Tensor], index: int) -> None:
        super().__init__()
        self.values = values
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return self.values[self.index]


class _NaNFeatures(nn.Module):
    """Stands in for a FeatureEmbedding: NaN features, so that a reader other than the input layers shows."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, sparse: Tensor, dense: Tensor) -> Tensor:
        return torch.full((sparse.shape[0], self.width), float("nan"))


class FactoredRank(nn.Module):
    """``user_sparse [U, S_user]``, ``user_dense [U, D_user]``, the item parts ``[N, out]``, ``rows [R]`` (each
    row's item) and ``segment [R]`` (each row's user) -> ``logits [R, T]``, the model's answer for the rows
    ``[user segment[r], item rows[r]]``."""

    def __init__(self, model: MultiTaskModel, layers: list[InputLayer], sides: SideLayout) -> None:
        super().__init__()
        self.users = _SidePart(layers, sides, "user")
        self.biases = [
            layer.linear.bias.detach()
            if layer.linear.bias is not None
            else torch.zeros(layer.linear.out_features)
            for layer in layers
        ]
        self.pre: list[Tensor] = []
        names = {module: name for name, module in model.named_modules()}
        self.model = copy.deepcopy(model)
        for index, layer in enumerate(layers):
            _replace(self.model, names[layer.linear], _Given(self.pre, index))
        for module, name in names.items():
            if isinstance(module, FeatureEmbedding):
                _replace(self.model, name, _NaNFeatures(module.spec.d_in))

    def forward(self, user_sparse: Tensor, user_dense: Tensor, *parts_rows_segment: Tensor) -> Tensor:
        *parts, rows, segment = parts_rows_segment
        users = self.users(user_sparse, user_dense)
        self.pre[:] = [
            part[rows] + (user + bias)[segment]
            for part, user, bias in zip(parts, users, self.biases, strict=True)
        ]
        spec = self.model.feature_spec
        n = rows.shape[0]
        batch = {
            "sparse": torch.zeros((n, spec.n_sparse), dtype=torch.int64),
            "dense": torch.zeros((n, spec.n_dense)),
        }
        return self.model(batch)


def _replace(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, replacement)


def export_factored(model: MultiTaskModel, directory: Path, sides: SideLayout | None, opset: int) -> bool:
    """Write ``ITEMS_FILE`` and ``RANK_FILE`` into the package being assembled in ``directory`` and check them
    through ONNX Runtime against the model; False (nothing written) when the model cannot be factored, or when
    the exporter cannot trace its factored forward (logged as a warning: the package is served from model.onnx).

    Raises:
        PackageError: when the factored graphs give other answers than the model (a bug, not a family limit).
    """
    spec = model.feature_spec
    if sides is None or not sides.user_sparse or not sides.item_sparse:
        return False  # each side needs an id column: the exporter drops a graph input that nothing reads
    if (sides.user_sparse + sides.item_sparse, sides.user_dense + sides.item_dense) != (
        spec.n_sparse,
        spec.n_dense,
    ):
        return False
    layers = input_layers(model)
    if not layers:
        return False
    items, rank = directory / ITEMS_FILE, directory / RANK_FILE
    items.parent.mkdir(parents=True, exist_ok=True)
    parts = [PART.format(j) for j in range(len(layers))]
    example = _example(model, sides, users=2, items=5, rows=7)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            item_parts = ItemParts(layers, sides).eval()
            item_inputs = (example["item_sparse"], example["item_dense"])
            _export(item_parts, item_inputs, items, ["item_sparse", "item_dense"], parts, opset)
            rank_inputs = (
                example["user_sparse"],
                example["user_dense"],
                *item_parts(*item_inputs),
                example["rows"],
                example["segment"],
            )
            names = ["user_sparse", "user_dense", *parts, "rows", "segment"]
            _export(FactoredRank(model, layers, sides).eval(), rank_inputs, rank, names, ["logits"], opset)
    except Exception as exc:  # the exporter's errors are untyped; model.onnx is already written and checked
        shutil.rmtree(items.parent)
        logger.warning("%s: no factored graphs, the exporter failed: %s", type(model).__name__, exc)
        return False
    worst = _parity(model, sides, items, rank, parts)
    if not np.isfinite(worst):
        shutil.rmtree(items.parent)
        logger.info(
            "%s: its features also feed more than its input layers; no factored graphs", type(model).__name__
        )
        return False
    if worst > PARITY_ATOL:
        raise PackageError(
            f"{directory}: factored graphs differ from the model by {worst:.2e} > {PARITY_ATOL} "
            f"(beyond {PARITY_RTOL} x |model|)"
        )
    return True


def _export(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], opset: int
) -> None:
    per_user = {"user_sparse", "user_dense"}
    axes = {
        name: {0: "users" if name in per_user else "items" if name.startswith("item") else "rows"}
        for name in inputs
    }
    axes |= {name: {0: "items" if name.startswith("item") else "rows"} for name in outputs}
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=opset,
        dynamo=False,
    )


def _example(
    model: MultiTaskModel, sides: SideLayout, users: int, items: int, rows: int, seed: int = 0
) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    vocab = model.feature_spec.sparse_vocab_sizes

    def ids(n: int, columns: tuple[int, ...]) -> Tensor:
        return (
            torch.stack([torch.randint(0, v, (n,), generator=generator) for v in columns], 1)
            if columns
            else torch.zeros((n, 0), dtype=torch.int64)
        )

    return {
        "user_sparse": ids(users, vocab[: sides.user_sparse]),
        "user_dense": torch.randn((users, sides.user_dense), generator=generator),
        "item_sparse": ids(items, vocab[sides.user_sparse :]),
        "item_dense": torch.randn((items, sides.item_dense), generator=generator),
        "rows": torch.randint(0, items, (rows,), generator=generator),
        "segment": torch.sort(torch.randint(0, users, (rows,), generator=generator)).values,
    }


def _parity(model: MultiTaskModel, sides: SideLayout, items: Path, rank: Path, parts: list[str]) -> float:
    """``parity_gap`` of the factored graphs through ONNX Runtime against the model in torch over 300 rows of
    3 users and 50 items (NaN when the features feed something besides the input layers)."""
    import onnxruntime as ort  # local: only export checks need it

    example = _example(model, sides, users=3, items=50, rows=300, seed=1)
    feeds = {k: v.numpy() for k, v in example.items()}
    options = {"providers": ["CPUExecutionProvider"]}
    item_values = ort.InferenceSession(str(items), **options).run(
        parts, {k: feeds[k] for k in ("item_sparse", "item_dense")}
    )
    rank_feeds = {k: feeds[k] for k in ("user_sparse", "user_dense", "rows", "segment")} | dict(
        zip(parts, item_values, strict=True)
    )
    factored = ort.InferenceSession(str(rank), **options).run(["logits"], rank_feeds)[0]
    rows, segment = example["rows"], example["segment"]
    batch = {
        "sparse": torch.cat([example["user_sparse"][segment], example["item_sparse"][rows]], 1),
        "dense": torch.cat([example["user_dense"][segment], example["item_dense"][rows]], 1),
    }
    with torch.no_grad():
        expected = model.eval()(batch).numpy()
    if not np.isfinite(factored).all():
        return float("nan")
    return parity_gap(factored, expected)
