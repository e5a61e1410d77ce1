"""MSSM: cell-level sparse sharing between experts and task slots with hard-concrete (L0) gates.

Ding et al., "MSSM: A Multiple-level Sparse Sharing Model for Efficient Multi-Task Learning", SIGIR 2021
(https://doi.org/10.1145/3404835.3463022); wiring as in the DML reference code (MODELS.md section 1.2) and the
DML paper's section 3.1.4 ("for MSSM and PLE, task-specific and shared sub-networks are designated"): task slot
t mixes its own specific expert(s) and the shared expert(s), never another task's specific expert (the
reference's ``mssm(..., task_specific=True)``; with 3 experts and 2 tasks: 1 + 1 specific, 1 shared). Each
(task slot, expert) pair has a learnable ``log_alpha`` per cell and a bias-free transform of the expert output;
the L0 penalty is ``sum sigmoid(log_alpha - tau * log(-l / r))`` weighted 1e-6.
``n_specific_experts=0`` gives every task slot all experts (the reference's ``task_specific=False``).
Only MSSM's cell-level sparse sharing, one level, is built: the paper's field-level sparse connection module
is not (the reference's defaults ``enable_fscm=False``, ``mssm_level_cnt=1``); docs/models/baselines.md.
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
    n_specific_experts: int = 1  # per task
    n_shared_experts: int = 1
    transform: bool = True
    temperature: float = 1.0
    stretch_low: float = -1.0
    stretch_high: float = 3.0
    log_alpha_init: float = -0.5
    l0_weight: float = 1e-6

    def __post_init__(self) -> None:
        if self.n_specific_experts < 0 or self.n_shared_experts < 0:
            raise ValueError("MSSMConfig: expert counts must be >= 0")
        if self.n_specific_experts + self.n_shared_experts == 0:
            raise ValueError("MSSMConfig: each task slot needs at least one expert")


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
    """Experts on the embeddings; task slot t = sum over its experts e of gate[t, e] * W[t, e] expert_e."""

    routing: Tensor  # buffer [T, E_t]: the expert indices task slot t reads

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
        n_specific = self.n_tasks * config.n_specific_experts
        experts = [
            Expert(d_in, config.expert_dims, config.activation, config.dropout)
            for _ in range(n_specific + config.n_shared_experts)
        ]
        self.experts = nn.ModuleList(experts)
        # slot t reads its own specific experts, then every shared expert
        own = [
            range(t * config.n_specific_experts, (t + 1) * config.n_specific_experts)
            for t in range(self.n_tasks)
        ]
        shared = list(range(n_specific, len(self.experts)))
        self.register_buffer(
            "routing", torch.tensor([[*o, *shared] for o in own], dtype=torch.long), persistent=False
        )
        n_inputs = config.n_specific_experts + config.n_shared_experts
        d = experts[0].d_out
        self.gates = HardConcreteGates(self.n_tasks, n_inputs, d, config)
        # W[t, e]: bias-free d x d transform of slot t's e-th input ("trans" mode), Linear's init
        bound = 1.0 / math.sqrt(d)
        self.transform = (
            nn.Parameter(torch.empty(self.n_tasks, n_inputs, d, d).uniform_(-bound, bound))
            if config.transform
            else None
        )
        self.build_towers(d, config.tower_dims, config.dropout, config.activation)

    def shared_representation(self, batch: Batch) -> Tensor:
        x = self.embedding(batch["sparse"], batch["dense"])
        experts = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, E, d]
        inputs = experts[:, self.routing]  # [B, T, E_t, d]
        if self.transform is not None:
            inputs = torch.einsum("btei,teij->btej", inputs, self.transform)
        return (inputs * self.gates()).sum(dim=2)

    def auxiliary_loss(self) -> Tensor:
        return super().auxiliary_loss() + self.config.l0_weight * self.gates.l0_penalty()
