"""Building blocks shared by every model in the zoo: feature embedding, MLP, expert, gate and tower.

Model files only wire these together (torch-rechub keeps the same split between ``basic/layers.py`` and the
model files), so that a fix here reaches every family at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn

TaskType = Literal["binary", "regression"]
ModuleT = TypeVar("ModuleT", bound=nn.Module)

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


@dataclass(frozen=True)
class TaskSpec:
    """One output column: a binary task predicts a logit, a regression task a value."""

    name: str
    type: TaskType = "binary"

    def __post_init__(self) -> None:
        if self.type not in ("binary", "regression"):
            raise ValueError(f"task {self.name!r}: type must be 'binary' or 'regression', got {self.type!r}")

    @classmethod
    def coerce(cls, value: TaskSpec | Mapping[str, Any]) -> TaskSpec:
        """Accept a TaskSpec or its dict form (as stored in configs and manifests)."""
        return value if isinstance(value, TaskSpec) else cls(**value)


@dataclass(frozen=True)
class FeatureSpec:
    """The model input: one categorical column per vocabulary (index 0 = out of vocabulary) plus dense columns."""

    sparse_vocab_sizes: tuple[int, ...] = ()
    n_dense: int = 0
    embedding_dim: int = 8
    sparse_names: tuple[str, ...] = field(default=())
    dense_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparse_vocab_sizes", tuple(int(v) for v in self.sparse_vocab_sizes))
        if not self.sparse_names:
            object.__setattr__(self, "sparse_names", tuple(f"sparse_{i}" for i in range(self.n_sparse)))
        if not self.dense_names:
            object.__setattr__(self, "dense_names", tuple(f"dense_{i}" for i in range(self.n_dense)))
        object.__setattr__(self, "sparse_names", tuple(self.sparse_names))
        object.__setattr__(self, "dense_names", tuple(self.dense_names))
        if len(self.sparse_names) != self.n_sparse or len(self.dense_names) != self.n_dense:
            raise ValueError("FeatureSpec: one name per sparse and per dense column is required")
        if any(v < 1 for v in self.sparse_vocab_sizes):
            raise ValueError(
                "FeatureSpec: every vocabulary needs at least the out-of-vocabulary row (size >= 1)"
            )
        if self.n_sparse + self.n_dense == 0:
            raise ValueError("FeatureSpec: a model needs at least one input column")

    @property
    def n_sparse(self) -> int:
        return len(self.sparse_vocab_sizes)

    @property
    def d_in(self) -> int:
        """Width of the concatenated embeddings and dense features."""
        return self.n_sparse * self.embedding_dim + self.n_dense

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def coerce(cls, value: FeatureSpec | Mapping[str, Any]) -> FeatureSpec:
        return value if isinstance(value, FeatureSpec) else cls(**value)


def coerce_tasks(tasks: Sequence[TaskSpec | Mapping[str, Any]]) -> tuple[TaskSpec, ...]:
    """Validate a task list: at least one task, unique names."""
    specs = tuple(TaskSpec.coerce(t) for t in tasks)
    if not specs:
        raise ValueError("a multi-task model needs at least one task")
    names = [t.name for t in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    return specs


def typed_modules(modules: nn.ModuleList, kind: type[ModuleT]) -> list[ModuleT]:
    """The members of ``modules`` as ``kind`` (nn.ModuleList is not generic: the checker sees plain Modules).

    Raises TypeError on a member of another class, which would fail on its first attribute access anyway.
    """
    members: list[ModuleT] = []
    for module in modules:
        if not isinstance(module, kind):
            raise TypeError(f"expected {kind.__name__} modules, found {type(module).__name__}")
        members.append(module)
    return members


def activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(_ACTIVATIONS))}") from None


class FeatureEmbedding(nn.Module):
    """One embedding table per sparse column, concatenated with the dense columns: ``[B, S], [B, D] -> [B, d_in]``.

    Indices outside ``[0, vocab)`` fall back to row 0 (out of vocabulary), so an unseen id at serving time
    cannot crash the graph.
    """

    def __init__(self, spec: FeatureSpec, init_std: float = 0.01) -> None:
        super().__init__()
        self.spec = spec
        tables = [nn.Embedding(v, spec.embedding_dim) for v in spec.sparse_vocab_sizes]
        for table in tables:
            nn.init.normal_(table.weight, std=init_std)
        self.tables = nn.ModuleList(tables)

    @property
    def d_out(self) -> int:
        return self.spec.d_in

    def forward(self, sparse: Tensor, dense: Tensor) -> Tensor:
        return self.embed(sparse, dense if self.spec.n_dense else None, range(len(self.tables)))

    def embed(self, sparse: Tensor, dense: Tensor | None, columns: range) -> Tensor:
        """The embeddings of the sparse columns ``columns`` (``sparse`` holds those only), then ``dense`` unless
        None: a part of the features, as Rank's factored graphs embed the user's columns and the items' apart
        (models.factored)."""
        tables = typed_modules(self.tables, nn.Embedding)
        parts = []
        for j, i in enumerate(columns):
            table = tables[i]
            idx = sparse[:, j]
            idx = torch.where((idx >= 0) & (idx < table.num_embeddings), idx, torch.zeros_like(idx))
            parts.append(table(idx))
        if dense is not None:
            parts.append(dense.to(torch.float32))
        return torch.cat(parts, dim=-1)

    def l2(self) -> Tensor:
        """Sum of squares of every table (the L2 term the DML reference code puts on embeddings only)."""
        zero = torch.zeros((), device=self._device())
        return sum((t.weight.pow(2).sum() for t in typed_modules(self.tables, nn.Embedding)), zero)

    def _device(self) -> torch.device:
        tables = typed_modules(self.tables, nn.Embedding)
        return tables[0].weight.device if tables else torch.device("cpu")


class MLP(nn.Module):
    """Stack of Linear -> activation -> dropout; ``d_out`` is the last hidden width (``d_in`` when empty)."""

    def __init__(
        self,
        d_in: int,
        hidden_dims: Sequence[int],
        activation_name: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = d_in
        for width in hidden_dims:
            layers += [nn.Linear(d, width), activation(activation_name)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = width
        self.net = nn.Sequential(*layers)
        self.d_out = d

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Expert(MLP):
    """An expert is an MLP; the alias names its role in MoE wiring."""


class Gate(nn.Module):
    """Softmax gate over experts, ``Linear(d_in -> n_experts)`` without hidden layer (as in MMoE/PLE)."""

    def __init__(self, d_in: int, n_experts: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, n_experts)

    def forward(self, x: Tensor, expert_outputs: Tensor) -> Tensor:
        """``x [B, d_in]``, ``expert_outputs [B, E, d]`` -> weighted sum ``[B, d]``.

        A batched ``[B, 1, E] @ [B, E, d]`` rather than ``einsum``: the same numbers, and ONNX Runtime runs the
        exported MatMul faster than its Einsum (benchmarks/bench_gate_mixture.py).
        """
        weights = torch.softmax(self.proj(x), dim=-1)
        return (weights.unsqueeze(1) @ expert_outputs).squeeze(1)


class Tower(nn.Module):
    """Task tower: hidden MLP then a Linear head to one output. ``hidden`` and ``head`` are separate steps so
    that DML's GKD can read the last hidden state before the head."""

    def __init__(
        self, d_in: int, hidden_dims: Sequence[int], activation_name: str = "relu", dropout: float = 0.0
    ):
        super().__init__()
        self.d_in = d_in
        self.mlp = MLP(d_in, hidden_dims, activation_name, dropout)
        self.out = nn.Linear(self.mlp.d_out, 1)

    @property
    def d_hidden(self) -> int:
        return self.mlp.d_out

    def hidden(self, x: Tensor) -> Tensor:
        return self.mlp(x)

    def head(self, h: Tensor) -> Tensor:
        return self.out(h).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.hidden(x))
