"""PLE: Progressive Layered Extraction.

Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized
Recommendations", RecSys 2020 (https://doi.org/10.1145/3383313.3412236). Sizes from DML section 3.1.4:
2 levels, 3 experts per level (one task-specific per task + one shared, for two tasks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.base import Batch, MultiTaskModel
from models.baselines.config import BackboneConfig, require_at_least_one
from models.layers import Expert, FeatureEmbedding, FeatureSpec, Gate, TaskSpec, typed_modules


@dataclass(frozen=True)
class PLEConfig(BackboneConfig):
    n_levels: int = 2
    n_specific_experts: int = 1
    n_shared_experts: int = 1  # >= 1: without shared experts no level shares anything

    def __post_init__(self) -> None:
        require_at_least_one(self, "n_levels", "n_shared_experts")


class _ExtractionLevel(nn.Module):
    """One CGC level: task slots gate over {own experts} + shared experts; the shared slot over all experts."""

    def __init__(self, d_in: int, n_tasks: int, config: PLEConfig, update_shared: bool) -> None:
        super().__init__()

        def experts(n: int) -> list[Expert]:
            return [Expert(d_in, config.expert_dims, config.activation, config.dropout) for _ in range(n)]

        self.specific = nn.ModuleList(
            nn.ModuleList(experts(config.n_specific_experts)) for _ in range(n_tasks)
        )
        shared = experts(config.n_shared_experts)
        self.shared = nn.ModuleList(shared)
        n_task_inputs = config.n_specific_experts + config.n_shared_experts
        self.task_gates = nn.ModuleList(Gate(d_in, n_task_inputs) for _ in range(n_tasks))
        n_all = n_tasks * config.n_specific_experts + config.n_shared_experts
        self.shared_gate = Gate(d_in, n_all) if update_shared else None
        self.d_out = shared[0].d_out

    def forward(self, task_inputs: list[Tensor], shared_input: Tensor) -> tuple[list[Tensor], Tensor | None]:
        shared_out = [e(shared_input) for e in self.shared]
        groups = typed_modules(self.specific, nn.ModuleList)
        specific_out = [[e(x) for e in group] for group, x in zip(groups, task_inputs, strict=True)]
        task_outputs = [
            gate(x, torch.stack(own + shared_out, dim=1))
            for gate, x, own in zip(self.task_gates, task_inputs, specific_out, strict=True)
        ]
        if self.shared_gate is None:
            return task_outputs, None
        everything = torch.stack([o for own in specific_out for o in own] + shared_out, dim=1)
        return task_outputs, self.shared_gate(shared_input, everything)


class PLE(MultiTaskModel):
    """Stacked extraction levels; the shared slot of the last level is not computed."""

    def __init__(
        self,
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        config: PLEConfig,
    ) -> None:
        super().__init__(features, tasks, config.embedding_l2)
        self.config = config
        self.embedding = FeatureEmbedding(self.feature_spec)
        levels = []
        d = self.feature_spec.d_in
        for level in range(config.n_levels):
            levels.append(
                _ExtractionLevel(d, self.n_tasks, config, update_shared=level < config.n_levels - 1)
            )
            d = levels[-1].d_out
        self.levels = nn.ModuleList(levels)
        self.build_towers(d, config.tower_dims, config.dropout, config.activation)

    def shared_representation(self, batch: Batch) -> Tensor:
        x = self.embedding(batch["sparse"], batch["dense"])
        task_inputs: list[Tensor] = [x] * self.n_tasks
        shared: Tensor | None = x
        for level in self.levels:
            assert shared is not None  # only the last level drops the shared slot
            task_inputs, shared = level(task_inputs, shared)
        return torch.stack(task_inputs, dim=1)
