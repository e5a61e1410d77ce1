"""MSSM: cell-level sparse sharing between experts and task slots with hard-concrete (L0) gates.

Ding et al., "MSSM: A Multiple-level Sparse Sharing Model for Efficient Multi-Task Learning", SIGIR 2021
(https://doi.org/10.1145/3404835.3463022); wiring as in the DML reference code (MODELS.md section 1.2):
for every (task slot, expert) pair a learnable ``log_alpha`` per cell, a bias-free transform of the expert
output, and the L0 penalty ``sum sigmoid(log_alpha - tau * log(-l / r))`` weighted 1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.base import Batch, MultiTaskModel
from models.baselines.config import BackboneConfig
from models.layers import Expert, FeatureEmbedding, FeatureSpec, TaskSpec


@dataclass(frozen=True)
class MSSMConfig(BackboneConfig):
    n_experts: int = 3
    transform: bool = True
    temperature: float = 1.0
    stretch_low: float = -1.0
    stretch_high: float = 3.0
    log_alpha_init: float = -0.5
    l0_weight: float = 1e-6


class HardConcreteGates(nn.Module):
    """Per-cell gates ``[T, E, d]``: a stochastic stretched sigmoid in training, deterministic at evaluation."""

    def __init__(self, n_tasks: int, n_experts: int, d: int, config: MSSMConfig) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n_tasks, n_experts, d), config.log_alpha_init))
        self.tau, self.low, self.high = config.temperature, config.stretch_low, config.stretch_high

    def forward(self) -> Tensor:
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.tau)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (self.high - self.low) + self.low).clamp(0.0, 1.0)

    def l0_penalty(self) -> Tensor:
        return torch.sigmoid(self.log_alpha - self.tau * math.log(-self.low / self.high)).sum()


class MSSM(MultiTaskModel):
    """Experts on the embeddings; task slot t = sum over experts of gate[t, e] * W[t, e] expert_e."""

    def __init__(
        self,
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        config: MSSMConfig,
    ) -> None:
        super().__init__(features, tasks, config.embedding_l2)
        self.config = config
        self.embedding = FeatureEmbedding(self.feature_spec)
        d_in = self.feature_spec.d_in
        self.experts = nn.ModuleList(
            Expert(d_in, config.expert_dims, config.activation, config.dropout)
            for _ in range(config.n_experts)
        )
        d = self.experts[0].d_out
        self.gates = HardConcreteGates(self.n_tasks, config.n_experts, d, config)
        # W[t, e]: bias-free d x d transform of expert e's output for task t ("trans" mode), Linear's init
        bound = 1.0 / math.sqrt(d)
        self.transform = (
            nn.Parameter(torch.empty(self.n_tasks, config.n_experts, d, d).uniform_(-bound, bound))
            if config.transform
            else None
        )
        self.build_towers(d, config.tower_dims, config.dropout, config.activation)

    def shared_representation(self, batch: Batch) -> Tensor:
        x = self.embedding(batch["sparse"], batch["dense"])
        experts = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, E, d]
        if self.transform is not None:
            cells = torch.einsum("bei,teij->btej", experts, self.transform)  # [B, T, E, d]
        else:
            cells = experts.unsqueeze(1).expand(-1, self.n_tasks, -1, -1)
        return (cells * self.gates()).sum(dim=2)

    def auxiliary_loss(self) -> Tensor:
        return super().auxiliary_loss() + self.config.l0_weight * self.gates.l0_penalty()
