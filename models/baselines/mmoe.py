"""MMoE: Multi-gate Mixture-of-Experts.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018
(https://doi.org/10.1145/3219819.3220007). Sizes from DML section 3.1.4: 3 experts of one 128 layer,
one softmax gate (no hidden layer) per task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.base import Batch, MultiTaskModel
from models.baselines.config import BackboneConfig, require_at_least_one
from models.layers import Expert, FeatureEmbedding, FeatureSpec, Gate, TaskSpec


@dataclass(frozen=True)
class MMoEConfig(BackboneConfig):
    n_experts: int = 3

    def __post_init__(self) -> None:
        require_at_least_one(self, "n_experts")


class MMoE(MultiTaskModel):
    """Shared experts; tower t reads the mixture chosen by gate t."""

    def __init__(
        self,
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        config: MMoEConfig,
    ) -> None:
        super().__init__(features, tasks, config.embedding_l2)
        self.config = config
        self.embedding = FeatureEmbedding(self.feature_spec)
        d_in = self.feature_spec.d_in
        experts = [
            Expert(d_in, config.expert_dims, config.activation, config.dropout)
            for _ in range(config.n_experts)
        ]
        self.experts = nn.ModuleList(experts)
        self.gates = nn.ModuleList(Gate(d_in, config.n_experts) for _ in self.tasks)
        self.build_towers(experts[0].d_out, config.tower_dims, config.dropout, config.activation)

    def shared_representation(self, batch: Batch) -> Tensor:
        x = self.embedding(batch["sparse"], batch["dense"])
        experts = torch.stack([expert(x) for expert in self.experts], dim=1)
        return torch.stack([gate(x, experts) for gate in self.gates], dim=1)
