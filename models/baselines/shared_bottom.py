"""Shared-Bottom: one bottom network feeds every task tower.

Caruana, "Multitask Learning", Machine Learning 28, 1997 (https://doi.org/10.1023/A:1007379606734);
sizes from DML section 3.1.4 (one shared layer of 128).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from models.base import Batch, MultiTaskModel
from models.baselines.config import BackboneConfig
from models.layers import MLP, FeatureEmbedding, FeatureSpec, TaskSpec


class SharedBottom(MultiTaskModel):
    """Embeddings -> one shared MLP -> the same vector into each tower."""

    def __init__(
        self,
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        config: BackboneConfig,
    ) -> None:
        super().__init__(features, tasks, config.embedding_l2)
        self.config = config
        self.embedding = FeatureEmbedding(self.feature_spec)
        self.bottom = MLP(self.feature_spec.d_in, config.expert_dims, config.activation, config.dropout)
        self.build_towers(self.bottom.d_out, config.tower_dims, config.dropout, config.activation)

    def shared_representation(self, batch: Batch) -> Tensor:
        shared = self.bottom(self.embedding(batch["sparse"], batch["dense"]))
        return shared.unsqueeze(1).expand(-1, self.n_tasks, -1)
