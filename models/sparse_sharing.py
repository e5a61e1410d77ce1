"""Sparse sharing: one shared MLP, one binary parameter mask per task, masks found by magnitude pruning.

Paper: T. Sun, Y. Shao, X. Li, P. Liu, H. Yan, X. Qiu, X. Huang, "Learning Sparse Sharing Architectures for
Multiple Tasks", AAAI'20, https://arxiv.org/abs/1911.05034 — in the form CSRec (Bai et al., WWW'22,
https://doi.org/10.1145/3485447.3512043) compares against: subnets ``x_t = MLP(x_o; M_t ⊙ Θ)`` (Eq. 1) feed
linear towers ``y_t = w^T x_t + b`` (Eq. 2), and all tasks are trained *in parallel* (the summed task losses).

The masks cover the weight matrices of the shared MLP (biases, embeddings and towers are not masked, as in the
sparse-sharing reference code). They start random (density ``init_density``) and are pruned with the schedule
of CSRec's Algorithm 1 (``models.schedules``: rounds of ``round_epochs`` epochs, magnitude pruning, rewinds of
every parameter and of the optimizer), so that CSRec differs from this baseline only by what CSRec adds:
alternating training and the contrastive loss. This module also holds what both share: the masked MLP, the
sharing / conflict ratios of the paper's Fig. 5, and ``fold_masks`` for export.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.base import Batch, ModelConfigError, MultiTaskModel, build_config, task_losses
from models.layers import MLP, FeatureEmbedding, FeatureSpec, TaskSpec, Tower
from models.registry import register_model
from models.schedules import Optimizer, PruningSchedule, magnitude_prune, sparsity

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskedSharingConfig:
    """CSRec section 3.1.3: MLP (256, 192, 128), ReLU, alpha 0.1, epsilon 0.4. ``init_density`` (Algorithm 1
    line 3: a random initial mask), ``round_epochs`` (training per pruning round; the paper follows [36], which
    trains a full run per round) and ``log_every`` are not given by the paper."""

    hidden_dims: tuple[int, ...] = (256, 192, 128)
    dropout: float = 0.0
    alpha: float = 0.1
    epsilon: float = 0.4
    init_density: float = 0.9
    round_epochs: int = 5
    rewind: bool = True
    log_every: int = 50
    embedding_l2: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.init_density <= 1:
            raise ModelConfigError(f"init_density must be in (0, 1], got {self.init_density}")
        if self.log_every < 1:
            raise ModelConfigError(f"log_every must be >= 1, got {self.log_every}")

    @classmethod
    def tiny(cls) -> Self:
        return cls(hidden_dims=(16, 8), round_epochs=1, log_every=2)

    @property
    def schedule(self) -> PruningSchedule:
        try:
            return PruningSchedule(self.alpha, self.epsilon, self.round_epochs, self.rewind)
        except ValueError as err:
            raise ModelConfigError(str(err)) from None


def probability_of_two_or_more(probabilities: Sequence[float]) -> float:
    """P(at least two of independent events with these probabilities): the sharing ratio random masks of
    these densities would have (one minus P(none) minus P(exactly one))."""
    none = math.prod(1 - p for p in probabilities)
    one = sum(
        p * math.prod(1 - q for j, q in enumerate(probabilities) if j != i)
        for i, p in enumerate(probabilities)
    )
    return 1 - none - one


def _theta0_name(parameter: str) -> str:
    return "theta0__" + parameter.replace(".", "__")


class MaskedSharingModel(MultiTaskModel):
    """Shared MLP with per-task masks, parallel training; CSRec subclasses it and changes ``objective``."""

    # buffers [T]: pruning rounds each task's mask went through, and whether it is fixed for good
    prune_rounds: Tensor
    mask_final: Tensor

    def __init__(
        self,
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        config: MaskedSharingConfig,
    ) -> None:
        super().__init__(features, tasks, config.embedding_l2)
        self.config = config
        self.schedule = config.schedule
        self.embedding = FeatureEmbedding(self.feature_spec)
        self.base = MLP(self.feature_spec.d_in, config.hidden_dims, "relu", config.dropout)
        self.linears = [m for m in self.base.net if isinstance(m, nn.Linear)]
        self.build_towers(self.base.d_out, (), 0.0)
        for i, linear in enumerate(self.linears):
            init = (torch.rand((self.n_tasks, *linear.weight.shape)) < config.init_density).float()
            self.register_buffer(f"mask_{i}", init)
            # the random initial masks (line 3), kept to measure how far pruning moved away from them
            self.register_buffer(f"mask_init_{i}", init.clone(), persistent=False)
        for name, parameter in list(self.named_parameters()):
            # Theta^(0) of Algorithm 1 (line 1), kept for the rewinds of line 13; not part of checkpoints.
            self.register_buffer(_theta0_name(name), parameter.detach().clone(), persistent=False)
        self.register_buffer("prune_rounds", torch.zeros(self.n_tasks, dtype=torch.long))
        self.register_buffer("mask_final", torch.zeros(self.n_tasks, dtype=torch.bool))
        self.optimizers: list[torch.optim.Optimizer] = []  # what make_optimizer built; rewinds reset them
        self.last_metrics: dict[str, float] = {}
        self.epoch_sums: dict[str, list[float]] = defaultdict(list)

    # masks -------------------------------------------------------------------------------------------------
    def masks(self, task: int) -> list[Tensor]:
        """Task ``task``'s mask per layer (views into the stacked buffers; edits land in the model)."""
        return [getattr(self, f"mask_{i}")[task] for i in range(len(self.linears))]

    def subnet(self, x: Tensor, masks: Sequence[Tensor], trainable: Sequence[Tensor] | None = None) -> Tensor:
        """Eq. 1/7: the shared MLP with weights ``M ⊙ Θ``; with ``trainable`` masks, weights outside them are
        constants of this pass (no gradient)."""
        layer = 0
        for module in self.base.net:
            if isinstance(module, nn.Linear):
                weight = module.weight
                if trainable is not None:
                    weight = torch.where(trainable[layer].bool(), weight, weight.detach())
                x = F.linear(x, weight * masks[layer], module.bias)
                layer += 1
            else:
                x = module(x)
        return x

    def shared_representation(self, batch: Batch) -> Tensor:
        x = self.embedding(batch["sparse"], batch["dense"])
        return torch.stack([self.subnet(x, self.masks(t)) for t in range(self.n_tasks)], dim=1)

    def task_logit(self, x: Tensor, task: int, masks: Sequence[Tensor]) -> Tensor:
        """One task's output through an arbitrary mask (the real one or a contrastive one)."""
        return self.towers[task](self.subnet(x, masks))

    # ratios of Fig. 5 ----------------------------------------------------------------------------------------
    def shared_positions(self) -> list[Tensor]:
        """Per layer, the shared weights: those at least two tasks' masks keep (with the paper's two tasks,
        both; "every task" would leave out a weight three of four tasks share)."""
        return [getattr(self, f"mask_{i}").sum(0) >= 2 for i in range(len(self.linears))]

    def sharing_ratio(self) -> float:
        """Shared weights / all weights of the base MLP (section 3.3.2)."""
        shared = self.shared_positions()
        return sum(int(s.sum()) for s in shared) / sum(s.numel() for s in shared)

    def conflict_ratio(self, batch: Batch, labels: Tensor) -> float:
        """Shared weights whose per-task gradients have opposite signs / shared weights (section 3.3.3),
        measured on ``batch`` with each task's own loss through its own subnet; leaves ``.grad`` untouched."""
        x = self.embedding(batch["sparse"], batch["dense"])
        weights = [linear.weight for linear in self.linears]
        signs = []
        for t in range(self.n_tasks):
            out = self.task_logit(x, t, self.masks(t)).unsqueeze(1)
            loss = task_losses(out, labels[:, t : t + 1], [self.tasks[t]]).sum()
            grads = torch.autograd.grad(loss, weights, retain_graph=True, allow_unused=True)
            signs.append(
                [
                    torch.zeros_like(w) if g is None else torch.sign(g)
                    for g, w in zip(grads, weights, strict=True)
                ]
            )
        conflicts, shared_total = 0, 0
        for layer, shared in enumerate(self.shared_positions()):
            stacked = torch.stack([s[layer] for s in signs])
            opposite = (stacked.max(0).values > 0) & (stacked.min(0).values < 0) & shared
            conflicts += int(opposite.sum())
            shared_total += int(shared.sum())
        return conflicts / shared_total if shared_total else 0.0

    def mask_statistics(self) -> dict[str, float]:
        """Per task: density and the share of its initial mask's live weights pruned since; over the MLP: the
        sharing ratio, the sharing ratio independent masks of these densities would have, and the mean |w| of
        weights some task keeps vs weights every task pruned."""
        stats: dict[str, float] = {"sharing_ratio": self.sharing_ratio()}
        densities = []
        for t, task in enumerate(self.tasks):
            masks = self.masks(t)
            initial = [getattr(self, f"mask_init_{i}")[t] for i in range(len(self.linears))]
            density = 1 - sparsity(masks)
            alive0 = sum(float(m.sum()) for m in initial)
            stats[f"density/{task.name}"] = density
            stats[f"pruned_since_init/{task.name}"] = (
                sum(float((m0 * (1 - m)).sum()) for m0, m in zip(initial, masks, strict=True)) / alive0
            )
            densities.append(density)
        stats["sharing_ratio_if_independent"] = probability_of_two_or_more(densities)
        weights = torch.cat([linear.weight.detach().abs().flatten() for linear in self.linears])
        any_live = torch.cat([getattr(self, f"mask_{i}").amax(0).flatten() for i in range(len(self.linears))])
        stats["abs_weight/live"] = float(weights[any_live > 0].mean())
        dead = weights[any_live == 0]
        stats["abs_weight/pruned"] = float(dead.mean()) if dead.numel() else 0.0
        return stats

    # training hooks (see models.schedules) ----------------------------------------------------------------------
    def make_optimizer(self, lr: float) -> Optimizer:
        """Adam over every parameter, kept so that a rewind can restart it (as [36] builds one per round)."""
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        self.optimizers = [optimizer]
        return optimizer

    def record(self, name: str, value: Tensor) -> None:
        """Add one value to this epoch's mean of ``name`` (loss magnitudes for the learning curves)."""
        self.epoch_sums[name].append(float(value.detach()))

    def objective(self, batch: Batch, labels: Tensor, step: int) -> Tensor:
        """Sparse sharing trains all tasks in parallel: the summed task losses of the masked subnets."""
        losses = task_losses(self(batch), labels, self.tasks)
        for task, loss in zip(self.tasks, losses, strict=True):
            self.record(f"loss/{task.name}", loss)
        return losses.sum()

    def training_loss(self, batch: Batch, labels: Tensor, step: int) -> Tensor:
        """The step's objective plus the auxiliary loss; measures the ratios every ``log_every`` steps."""
        if step % self.config.log_every == 0:
            conflict = self.conflict_ratio(batch, labels)
            self.record("conflict_ratio", torch.tensor(conflict))
            self.last_metrics = {"sharing_ratio": self.sharing_ratio(), "conflict_ratio": conflict}
            logger.info("step %d: sharing ratio %.4f, conflict ratio %.4f", step, *self.last_metrics.values())
        return self.objective(batch, labels, step) + self.auxiliary_loss()

    @torch.no_grad()
    def prune_round(self) -> None:
        """Algorithm 1 lines 11-18 for every task whose mask is not fixed yet, on the same trained weights:
        prune ``alpha`` of its live weights; a subnet now sparser than ``epsilon`` keeps its mask for good.
        While any subnet is not, rewind every parameter to its initial value and restart the optimizer."""
        weights = [linear.weight for linear in self.linears]
        for task in range(self.n_tasks):
            if self.mask_final[task]:
                continue
            masks = self.masks(task)
            magnitude_prune(weights, masks, self.schedule.alpha)
            self.prune_rounds[task] += 1
            level = sparsity(masks)
            if level > self.schedule.epsilon:
                self.mask_final[task] = True
                logger.info(
                    "task %s: mask fixed at sparsity %.4f after %d rounds",
                    self.tasks[task].name,
                    level,
                    int(self.prune_rounds[task]),
                )
        if self.schedule.rewind and not self.mask_final.all():
            self.rewind()

    @torch.no_grad()
    def rewind(self) -> None:
        """Every parameter back to Theta^(0); the optimizer forgets its moments."""
        for name, parameter in self.named_parameters():
            parameter.copy_(getattr(self, _theta0_name(name)))
        for optimizer in self.optimizers:
            optimizer.state.clear()

    def on_step(self, step: int) -> dict[str, float]:
        """The latest sharing and conflict ratios (measured every ``log_every`` steps)."""
        return dict(self.last_metrics)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """End of a pruning round every ``round_epochs`` epochs; returns this epoch's mean losses and conflict
        ratio, then the mask statistics (after the round's prune, if any)."""
        metrics = {name: sum(values) / len(values) for name, values in self.epoch_sums.items() if values}
        self.epoch_sums.clear()
        if (epoch + 1) % self.schedule.round_epochs == 0 and not self.mask_final.all():
            self.prune_round()
        return {**metrics, **self.mask_statistics(), "masks_fixed": float(self.mask_final.all())}

    def selection_ready(self) -> bool:
        """Checkpoints are comparable only once every mask is fixed (rewinds reset the model before that)."""
        return bool(self.mask_final.all())

    # export ---------------------------------------------------------------------------------------------------
    def fold_masks(self) -> FoldedMaskedModel:
        """A plain model with ``M_t ⊙ Θ`` written into T dense MLPs: same outputs, no mask ops in the graph."""
        return FoldedMaskedModel(self)

    def for_export(self) -> FoldedMaskedModel:
        return self.fold_masks()


class FoldedMaskedModel(MultiTaskModel):
    """Export form of a masked-sharing model: one ordinary MLP per task holding the masked weights."""

    def __init__(self, source: MaskedSharingModel) -> None:
        super().__init__(source.feature_spec, source.tasks)
        cfg = source.config
        self.embedding = FeatureEmbedding(self.feature_spec)
        self.embedding.load_state_dict(source.embedding.state_dict())
        subnets = [MLP(self.feature_spec.d_in, cfg.hidden_dims, "relu", cfg.dropout) for _ in self.tasks]
        self.subnets = nn.ModuleList(subnets)
        with torch.no_grad():
            for t, subnet in enumerate(subnets):
                linears = [m for m in subnet.net if isinstance(m, nn.Linear)]
                for linear, src, mask in zip(linears, source.linears, source.masks(t), strict=True):
                    linear.weight.copy_(src.weight * mask)
                    linear.bias.copy_(src.bias)
        self.towers = nn.ModuleList(Tower(source.base.d_out, (), "relu", 0.0) for _ in self.tasks)
        self.towers.load_state_dict(source.towers.state_dict())
        self.train(source.training)

    def shared_representation(self, batch: Batch) -> Tensor:
        x = self.embedding(batch["sparse"], batch["dense"])
        return torch.stack([subnet(x) for subnet in self.subnets], dim=1)


@register_model("sparse-sharing")
def sparse_sharing(
    features: FeatureSpec | Mapping[str, Any],
    tasks: Sequence[TaskSpec | Mapping[str, Any]],
    preset: str = "default",
    **overrides: Any,
) -> MaskedSharingModel:
    """Sparse sharing baseline: parallel training, masks by Algorithm 1's pruning schedule."""
    return MaskedSharingModel(features, tasks, build_config(MaskedSharingConfig, preset, overrides))
