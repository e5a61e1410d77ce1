"""DML: Deep Mutual Learning across task towers = CTFM (at the towers' entry) + GKD (at their top).

Ren et al., "Deep Mutual Learning across Task Towers for Effective Multi-Task Recommender Learning",
ORSUM@RecSys 2023 (https://arxiv.org/abs/2309.10357). Both modules plug into any backbone that follows the
``MultiTaskModel`` split (tower inputs ``[B, T, d]`` and ``Tower.hidden``/``Tower.head``).

Stop-gradients, as in section 2.3/2.4 of the paper:
* CTFM: no gradient flows from the keys and values back into ``Mat_o`` (tower inputs + task embeddings), so a
  task's loss reaches its own tower input (through its query and the residual) and never the other towers'
  inputs, whose keys/values are constants for it.
* GKD: no gradient flows from the global knowledge ``GK^k`` back into the concatenated hidden states.
DML_v0 (Table 2) keeps GKD but removes CTFM's stop-gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Self

import torch
from torch import Tensor, nn

from models.base import Batch, MultiTaskModel, build_config
from models.baselines import BACKBONES
from models.layers import FeatureSpec, TaskSpec, Tower, typed_modules
from models.registry import register_model


@dataclass(frozen=True)
class DMLConfig:
    """Which DML parts are on and their sizes (paper section 3.1.4: GKD MLPs of one 80 layer; dropout 0.5 at
    CTFM and GKD as the reference code's run script, the paper states none)."""

    use_ctfm: bool = True
    use_gkd: bool = True
    ctfm_stop_gradient: bool = True
    gkd_stop_gradient: bool = True
    gkd_dim: int = 80
    dml_dropout: float = 0.5
    # older reference-code form of GKD: tower hidden + weighted knowledge into the last layer (commit 18772f5)
    gkd_residual: bool = False
    # Deliberate options against GKD's train/eval shift (docs/models/dml.md); the defaults are the paper's code.
    gkd_dropout: float | None = None  # dropout on the global knowledge GK^k; None = dml_dropout
    gkd_zero_init: bool = False  # GKD's output layer starts at 0, so DML starts as its backbone
    gkd_l2: float = 0.0  # L2 (sum of squares) on GKD's weights, added to the auxiliary loss

    @classmethod
    def tiny(cls) -> Self:
        return cls(gkd_dim=4, dml_dropout=0.1)


class CTFM(nn.Module):
    """Cross-Task Feature Mining: attention over the T tower inputs, keys/values cut from the gradient."""

    def __init__(self, n_tasks: int, d: int, dropout: float, stop_gradient: bool = True) -> None:
        super().__init__()
        self.task_embedding = nn.Parameter(torch.randn(n_tasks, d) * 0.01)
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)
        self.stop_gradient = stop_gradient
        self.scale = 1.0 / math.sqrt(d)

    def forward(self, tower_inputs: Tensor) -> Tensor:
        """``[B, T, d] -> [B, T, d]``: ``Mat_o + Attention(Q(Mat_o), K(sg(Mat_o)), V(sg(Mat_o)))``."""
        mat_o = tower_inputs + self.task_embedding
        kv_in = mat_o.detach() if self.stop_gradient else mat_o
        q = torch.relu(self.query(mat_o))
        k = torch.relu(self.key(kv_in))
        v = torch.relu(self.value(kv_in))
        attention = torch.softmax(torch.matmul(q, k.transpose(1, 2)) * self.scale, dim=-1)
        return mat_o + self.dropout(torch.matmul(attention, v))


class GKD(nn.Module):
    """Global Knowledge Distillation, task-specific parameters; returns the per-task logit contribution."""

    def __init__(
        self,
        n_tasks: int,
        d_hidden: int,
        d_knowledge: int,
        dropout: float,
        stop_gradient: bool = True,
        residual: bool = False,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        self.knowledge = nn.ModuleList(
            nn.Sequential(nn.Linear(n_tasks * d_hidden, d_knowledge), nn.ReLU(), nn.Dropout(dropout))
            for _ in range(n_tasks)
        )
        self.weights = nn.ModuleList(nn.Linear(d_hidden + d_knowledge, d_knowledge) for _ in range(n_tasks))
        d_final = d_knowledge + d_hidden if residual else d_knowledge
        out = [nn.Linear(d_final, 1, bias=False) for _ in range(n_tasks)]
        if zero_init:
            for layer in out:
                nn.init.zeros_(layer.weight)
        self.out = nn.ModuleList(out)
        self.stop_gradient = stop_gradient
        self.residual = residual

    def l2(self) -> Tensor:
        """Sum of squares of every weight matrix (biases excluded)."""
        zero = torch.zeros((), device=typed_modules(self.out, nn.Linear)[0].weight.device)
        return sum((m.weight.pow(2).sum() for m in self.modules() if isinstance(m, nn.Linear)), zero)

    def forward(self, hidden: Sequence[Tensor]) -> Tensor:
        """``T x [B, d_hidden] -> [B, T]``, added to the towers' own logits (the paper's last MLP on
        ``[WGK^k, h^k]`` is this linear term plus the tower head on ``h^k``)."""
        everything = torch.cat(list(hidden), dim=-1)
        if self.stop_gradient:
            everything = everything.detach()
        logits = []
        for t, h in enumerate(hidden):
            gk = self.knowledge[t](everything)
            gw = torch.sigmoid(self.weights[t](torch.cat([h, gk], dim=-1)))
            wgk = gk * gw
            logits.append(self.out[t](torch.cat([h, wgk], dim=-1) if self.residual else wgk).squeeze(-1))
        return torch.stack(logits, dim=1)


class DML(MultiTaskModel):
    """A backbone with CTFM before and/or GKD around its towers."""

    def __init__(self, backbone: MultiTaskModel, config: DMLConfig) -> None:
        super().__init__(backbone.feature_spec, backbone.tasks, backbone.embedding_l2)
        self.backbone = backbone
        self.config = config
        towers = typed_modules(backbone.towers, Tower)
        d_in = towers[0].d_in
        d_hidden = towers[0].d_hidden
        self.ctfm = (
            CTFM(self.n_tasks, d_in, config.dml_dropout, config.ctfm_stop_gradient)
            if config.use_ctfm
            else None
        )
        self.gkd = (
            GKD(
                self.n_tasks,
                d_hidden,
                config.gkd_dim,
                config.dml_dropout if config.gkd_dropout is None else config.gkd_dropout,
                config.gkd_stop_gradient,
                config.gkd_residual,
                config.gkd_zero_init,
            )
            if config.use_gkd
            else None
        )

    def shared_representation(self, batch: Batch) -> Tensor:
        tower_inputs = self.backbone.shared_representation(batch)
        return self.ctfm(tower_inputs) if self.ctfm is not None else tower_inputs

    def tower_hidden(self, tower_inputs: Tensor) -> list[Tensor]:
        towers = typed_modules(self.backbone.towers, Tower)
        return [tower.hidden(tower_inputs[:, t]) for t, tower in enumerate(towers)]

    def task_towers(self, tower_inputs: Tensor) -> Tensor:
        hidden = self.tower_hidden(tower_inputs)
        towers = typed_modules(self.backbone.towers, Tower)
        logits = torch.stack([tower.head(h) for tower, h in zip(towers, hidden, strict=True)], dim=1)
        return logits + self.gkd(hidden) if self.gkd is not None else logits

    def auxiliary_loss(self) -> Tensor:
        aux = self.backbone.auxiliary_loss()
        if self.ctfm is not None and self.embedding_l2:
            aux = aux + self.embedding_l2 * self.ctfm.task_embedding.pow(2).sum()
        if self.gkd is not None and self.config.gkd_l2:
            aux = aux + self.config.gkd_l2 * self.gkd.l2()
        return aux


VARIANTS: dict[str, dict[str, bool]] = {
    "dml": {},
    "ctfm": {"use_gkd": False},
    "gkd": {"use_ctfm": False},
    "dml_v0": {"ctfm_stop_gradient": False},
}
_DML_KEYS = {f.name for f in fields(DMLConfig)}


def _dml_builder(backbone: str, variant: Mapping[str, bool]) -> Any:
    model_cls, config_cls = BACKBONES[backbone]

    def builder(
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        preset: str = "default",
        **overrides: Any,
    ) -> DML:
        dml_overrides = {k: v for k, v in overrides.items() if k in _DML_KEYS}
        backbone_overrides = {k: v for k, v in overrides.items() if k not in _DML_KEYS}
        dml_config = build_config(DMLConfig, preset, {**variant, **dml_overrides})
        net = model_cls(features, tasks, build_config(config_cls, preset, backbone_overrides))
        if not isinstance(net, MultiTaskModel):  # BACKBONES holds classes of the zoo's forward contract
            raise TypeError(f"DML backbone {backbone!r} is a {type(net).__name__}, not a MultiTaskModel")
        return DML(net, dml_config)

    builder.__doc__ = f"{backbone} with DML variant {dict(variant) or 'CTFM + GKD'}"
    return builder


for _backbone in BACKBONES:
    for _suffix, _variant in VARIANTS.items():
        register_model(f"{_backbone}+{_suffix}")(_dml_builder(_backbone, _variant))
