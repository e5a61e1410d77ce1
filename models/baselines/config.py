"""Config shared by the baseline backbones: the DML paper's sizes (section 3.1.4) as defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class BackboneConfig:
    """Bottom sub-networks of one layer of 128, towers (128, 80, 1), ReLU, dropout 0.5, L2 1e-6 on embeddings."""

    expert_dims: tuple[int, ...] = (128,)
    tower_dims: tuple[int, ...] = (128, 80)
    dropout: float = 0.5
    activation: str = "relu"
    embedding_l2: float = 1e-6

    @classmethod
    def tiny(cls) -> Self:
        """A few units per layer, for tests."""
        return cls(expert_dims=(8,), tower_dims=(8, 4), dropout=0.1)


def require_at_least_one(config: object, *fields: str) -> None:
    """ValueError naming the first of ``fields`` below 1: a model with no expert or no level cannot be built
    (it failed later with an IndexError, or silently built a model without its experts)."""
    for name in fields:
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"{type(config).__name__}.{name}: must be >= 1, got {value!r}")
