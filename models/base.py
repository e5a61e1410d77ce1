"""The one forward contract of the zoo and the helpers every model builder shares.

``forward({"sparse": LongTensor[B, S], "dense": FloatTensor[B, D]}) -> Tensor[B, T]`` in the task order of
the config: a logit for binary tasks, a value for regression tasks. It is split, like timm's
forward_features/forward_head, into ``shared_representation`` (everything below the towers; returns the
stacked tower inputs ``[B, T, d]``) and ``task_towers`` (``[B, T, d] -> [B, T]``), which is where DML plugs in.
Auxiliary losses (router balance, L0 penalties, contrastive terms...) come from ``auxiliary_loss()`` after a
forward pass.

Builder convention (for ``models.registry.register_model``): ``builder(features, tasks, preset="default",
**overrides)`` where ``features`` is a FeatureSpec (or its dict), ``tasks`` a list of TaskSpec (or dicts),
``preset`` is ``"default"`` (the paper's sizes) or ``"tiny"`` (for tests) and ``overrides`` are fields of the
model's config dataclass. ``build_config`` resolves preset + overrides with errors that name the bad keys.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, Self, TypeVar

import torch
from pydantic import TypeAdapter, ValidationError
from torch import Tensor, nn
from torch.nn import functional as F

from models.errors import ModelsError
from models.layers import FeatureEmbedding, FeatureSpec, TaskSpec, Tower, coerce_tasks

Batch = Mapping[str, Tensor]


class PresetConfig(Protocol):
    """A model family's config: a dataclass whose ``tiny`` classmethod gives the small preset tests train."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @classmethod
    def tiny(cls) -> Self: ...


ConfigT = TypeVar("ConfigT", bound=PresetConfig)


class ModelConfigError(ModelsError, ValueError):
    """A model config names an unknown preset or field."""


class MultiTaskModel(nn.Module):
    """Base of every ranking model: features in, ``[B, T]`` out."""

    kind = "ranking"

    def __init__(
        self,
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        embedding_l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.feature_spec = FeatureSpec.coerce(features)
        self.tasks = coerce_tasks(tasks)
        self.embedding_l2 = embedding_l2
        self.towers = nn.ModuleList()

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def build_towers(
        self, d_in: int, hidden_dims: Sequence[int], dropout: float, activation: str = "relu"
    ) -> None:
        """One Tower per task on inputs of width ``d_in``."""
        self.towers = nn.ModuleList(Tower(d_in, hidden_dims, activation, dropout) for _ in self.tasks)

    def shared_representation(self, batch: Batch) -> Tensor:
        """Everything below the towers: the tower inputs stacked as ``[B, T, d]``."""
        raise NotImplementedError

    def task_towers(self, tower_inputs: Tensor) -> Tensor:
        """``[B, T, d] -> [B, T]``: tower t reads slice t."""
        return torch.stack([tower(tower_inputs[:, t]) for t, tower in enumerate(self.towers)], dim=1)

    def forward(self, batch: Batch) -> Tensor:
        return self.task_towers(self.shared_representation(batch))

    def auxiliary_loss(self) -> Tensor:
        """Extra training loss of the last forward pass; here the embedding-table L2 (0 unless configured)."""
        zero = torch.zeros((), device=self._device())
        if self.embedding_l2 == 0:
            return zero
        tables = [m.l2() for m in self.modules() if isinstance(m, FeatureEmbedding)]
        return self.embedding_l2 * sum(tables, zero)

    def for_export(self) -> MultiTaskModel:
        """The module to export to ONNX (a model that trains with masks or schedules may fold them first)."""
        return self

    def _device(self) -> torch.device:
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")


def build_config(config_cls: type[ConfigT], preset: str, overrides: Mapping[str, Any]) -> ConfigT:
    """Resolve ``preset`` ("default" or "tiny", a classmethod of the config) plus field overrides."""
    if preset == "default":
        base = config_cls()
    elif preset == "tiny":
        base = config_cls.tiny()
    else:
        raise ModelConfigError(f"{config_cls.__name__}: unknown preset {preset!r}; allowed: default, tiny")
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ModelConfigError(
            f"{config_cls.__name__}: unknown keys {unknown}; allowed keys: {sorted(known)}"
        )
    hints = typing.get_type_hints(config_cls)
    for key, value in overrides.items():
        _check_override(config_cls.__name__, key, value, hints[key])
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        return dataclasses.replace(base, **values)
    except ModelConfigError:
        raise
    except ValueError as exc:  # a config's own __post_init__ check
        raise ModelConfigError(str(exc)) from None


def _check_override(config_name: str, key: str, value: Any, hint: Any) -> None:
    """``value`` fits the field's annotation (a count or a width is never negative), or ModelConfigError."""
    try:
        TypeAdapter(hint).validate_python(tuple(value) if isinstance(value, list) else value, strict=True)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise ModelConfigError(f"{config_name}.{key}: {problem}, got {value!r}") from None
    items = value if isinstance(value, list | tuple) else [value]
    if any(isinstance(v, int) and not isinstance(v, bool) and v < 0 for v in items):
        raise ModelConfigError(f"{config_name}.{key}: must be >= 0, got {value!r}")


def task_losses(outputs: Tensor, labels: Tensor, tasks: Sequence[TaskSpec]) -> Tensor:
    """Per-task mean loss ``[T]``: log-loss on logits for binary tasks, MSE for regression tasks."""
    losses = []
    for t, task in enumerate(tasks):
        y = labels[:, t].to(outputs.dtype)
        if task.type == "binary":
            losses.append(F.binary_cross_entropy_with_logits(outputs[:, t], y))
        else:
            losses.append(F.mse_loss(outputs[:, t], y))
    return torch.stack(losses)


def random_batch(spec: FeatureSpec, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Random valid inputs (ids within each vocabulary, standard-normal dense) for parity checks and tests."""
    g = generator or torch.Generator().manual_seed(0)
    sparse = (
        torch.stack([torch.randint(0, v, (n,), generator=g) for v in spec.sparse_vocab_sizes], dim=1)
        if spec.n_sparse
        else torch.zeros((n, 0), dtype=torch.int64)
    )
    dense = torch.randn((n, spec.n_dense), generator=g)
    return {"sparse": sparse, "dense": dense}


def make_builder(model_cls: type[nn.Module], config_cls: type[Any]) -> Any:
    """A registry builder following the convention above: ``builder(features, tasks, preset, **overrides)``."""

    def builder(
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        preset: str = "default",
        **overrides: Any,
    ) -> nn.Module:
        return model_cls(features, tasks, build_config(config_cls, preset, overrides))

    builder.__name__ = f"build_{model_cls.__name__.lower()}"
    builder.__doc__ = model_cls.__doc__
    builder.__annotations__["return"] = model_cls  # lets registry.model_kind read the class's kind
    return builder
