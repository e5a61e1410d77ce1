"""Single-task baseline: one independent network per task (own embedding tables, own MLP).

The reference point of every multi-task paper; sizes follow DML (Tang et al., ORSUM@RecSys 2023,
https://arxiv.org/abs/2309.10357), section 3.1.4: each task is a (128, 128, 80, 1) MLP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.base import Batch, MultiTaskModel
from models.baselines.config import BackboneConfig
from models.layers import MLP, FeatureEmbedding, FeatureSpec, TaskSpec


class SingleTask(MultiTaskModel):
    """T separate networks; ``shared_representation`` only stacks their bottoms, nothing is shared."""

    def __init__(
        self,
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        config: BackboneConfig,
    ) -> None:
        super().__init__(features, tasks, config.embedding_l2)
        self.config = config
        self.embeddings = nn.ModuleList(FeatureEmbedding(self.feature_spec) for _ in self.tasks)
        d_in = self.feature_spec.d_in
        bottoms = [MLP(d_in, config.expert_dims, config.activation, config.dropout) for _ in self.tasks]
        self.bottoms = nn.ModuleList(bottoms)
        self.build_towers(bottoms[0].d_out, config.tower_dims, config.dropout, config.activation)

    def shared_representation(self, batch: Batch) -> Tensor:
        return torch.stack(
            [
                bottom(embedding(batch["sparse"], batch["dense"]))
                for embedding, bottom in zip(self.embeddings, self.bottoms, strict=True)
            ],
            dim=1,
        )
