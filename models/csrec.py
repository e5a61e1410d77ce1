"""CSRec: contrastive sharing over per-task parameter masks, trained alternately.

Paper: T. Bai, Y. Xiao, B. Wu, G. Yang, H. Yu, J.-Y. Nie, "A Contrastive Sharing Model for Multi-Task
Recommendation", WWW'22, https://doi.org/10.1145/3485447.3512043 (no public code).

The network is the sparse-sharing one (``models.sparse_sharing``: subnets ``M_t ⊙ Θ`` of one MLP, linear
towers). Training follows Algorithm 1: the tasks take turns, one mini-batch each (step ``s`` trains task
``s mod T``); a step minimises the contrastive loss of Eq. 3-6 for that task,

    loss_r(p) = sigmoid(ln loss(p))                        (Eq. 5)
    Loss_c    = loss_r(p(y_t | M_t)) - loss_r(p(y_t | M'_t))  (Eq. 6)

where ``M'_t`` is a contrastive mask drawn fresh each step from ``M_t`` (section 3.3.5): ``random_reverse``
drops a random ``reverse_ratio`` of the subnet's weights (mask bits 1 -> 0, the "contrastive parameter" of Fig. 1
whose removal degrades the task; ``reverse_pruned=True`` also turns pruned weights on, the literal "otherwise
0 to 1" of section 2.2.2), ``shared_random_reverse`` drops only weights another task keeps too.

Only the subnet learns from the contrast, and a step moves only what task ``t`` owns (Algorithm 1, line 10
updates ``Θ ⊙ M_t``): in the contrastive pass the input embeddings, the task tower and every weight outside
``M_t`` are constants, so the ``- loss_r(M'_t)`` term cannot be lowered by moving them; each task has its own
Adam state (a step follows task ``t``'s gradients, not momentum left by the other tasks' steps) and weights
outside ``M_t`` are left as they were. Pruning rounds, rewinds and the ratios of Fig. 5 are shared with
sparse sharing. ``alternating=False`` / ``use_contrastive=False`` give the ablations CSRec(CL) and CSRec(AT) of
section 3.3.1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.base import Batch, ModelConfigError, build_config, task_losses
from models.layers import FeatureSpec, TaskSpec
from models.registry import register_model
from models.schedules import Optimizer
from models.sparse_sharing import MaskedSharingConfig, MaskedSharingModel

CONTRASTIVE_STRATEGIES = frozenset({"random_reverse", "shared_random_reverse"})


@dataclass(frozen=True)
class CSRecConfig(MaskedSharingConfig):
    """Section 3.1.3: random-reverse contrastive masks. ``reverse_ratio`` is not given by the paper ("with
    different random sampling ratio"): 0.3 had the best census validation AUC of 0.1 / 0.3 / 0.5
    (benchmarks/results/csrec_reverse_ratio_sweep.md)."""

    contrastive: str = "random_reverse"
    reverse_ratio: float = 0.3
    reverse_pruned: bool = False
    alternating: bool = True
    use_contrastive: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.contrastive not in CONTRASTIVE_STRATEGIES:
            raise ModelConfigError(
                f"contrastive: {self.contrastive!r} is not one of {sorted(CONTRASTIVE_STRATEGIES)}"
            )
        if not 0 < self.reverse_ratio <= 1:
            raise ModelConfigError(f"reverse_ratio must be in (0, 1], got {self.reverse_ratio}")


def log_loss_ratio(loss: Tensor) -> Tensor:
    """Eq. 5: ``sigmoid(ln loss)``, a bounded transform of the task loss, computed as the equal
    ``loss / (1 + loss)``: through ``ln``, a loss of exactly 0 (a saturated tower) had a NaN gradient."""
    return loss / (1 + loss)


def contrastive_loss(positive_loss: Tensor, negative_loss: Tensor) -> Tensor:
    """Eq. 6: the real subnet's transformed loss minus the contrastive subnet's."""
    return log_loss_ratio(positive_loss) - log_loss_ratio(negative_loss)


def contrastive_masks(
    masks: Sequence[Tensor],
    shared: Sequence[Tensor],
    strategy: str,
    ratio: float,
    reverse_pruned: bool = False,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """``M'_t``: reverse a random ``ratio`` of the live bits of ``masks`` (of the pruned bits too when
    ``reverse_pruned``) for ``random_reverse``; only bits in ``shared`` for ``shared_random_reverse``."""
    out = []
    for mask, shared_here in zip(masks, shared, strict=True):
        flip = torch.rand(mask.shape, generator=generator, device=mask.device) < ratio
        if strategy == "shared_random_reverse":
            flip = flip & shared_here
        elif not reverse_pruned:
            flip = flip & mask.bool()
        out.append(torch.where(flip, 1.0 - mask, mask))
    return out


class AlternatingAdam:
    """One Adam per task; the step of task ``t`` (``model.active_task``) uses task ``t``'s Adam and then puts
    back every MLP weight outside ``M_t`` (Adam would move weights that ``t`` pruned with old momentum)."""

    def __init__(self, model: CSRec, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.model = model
        self.optimizers = list(optimizers)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Every task's Adam state, in task order (a resumed run continues from it)."""
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(state)

    @torch.no_grad()
    def step(self) -> None:
        task = self.model.active_task
        weights = [linear.weight for linear in self.model.linears]
        before = [w.detach().clone() for w in weights]
        self.optimizers[task].step()
        for weight, old, mask in zip(weights, before, self.model.masks(task), strict=True):
            weight.copy_(torch.where(mask.bool(), weight, old))


class CSRec(MaskedSharingModel):
    """Sparse-sharing network trained by Algorithm 1 (alternating tasks, contrastive loss, pruning)."""

    config: CSRecConfig

    def __init__(
        self,
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        config: CSRecConfig,
    ) -> None:
        super().__init__(features, tasks, config)
        self.active_task = 0

    def make_optimizer(self, lr: float) -> Optimizer:
        """Alternating training: one Adam per task (see AlternatingAdam); in parallel (CSRec(CL)): one Adam."""
        if not self.config.alternating:
            return super().make_optimizer(lr)
        self.optimizers = [torch.optim.Adam(self.parameters(), lr=lr) for _ in self.tasks]
        return AlternatingAdam(self, self.optimizers)

    def objective(self, batch: Batch, labels: Tensor, step: int) -> Tensor:
        """Eq. 6 for task ``step mod T`` on this mini-batch (every task, summed, when not alternating; the
        plain task loss in place of Eq. 6 without ``use_contrastive``)."""
        self.active_task = step % self.n_tasks
        tasks = [self.active_task] if self.config.alternating else range(self.n_tasks)
        x = self.embedding(batch["sparse"], batch["dense"])
        total = x.new_zeros(())
        for task in tasks:
            spec, name = [self.tasks[task]], self.tasks[task].name
            y = labels[:, task : task + 1]
            positive = task_losses(self.task_logit(x, task, self.masks(task)).unsqueeze(1), y, spec).sum()
            self.record(f"loss/{name}", positive)
            if not self.config.use_contrastive:
                total = total + positive
                continue
            negative = task_losses(self.contrastive_logit(x, task).unsqueeze(1), y, spec).sum()
            self.record(f"contrastive_subnet_loss/{name}", negative)
            loss = contrastive_loss(positive, negative)
            self.record(f"contrastive_loss/{name}", loss)
            total = total + loss
        return total

    def contrastive_mask(self, task: int) -> list[Tensor]:
        """A fresh ``M'_t`` per layer; "shared" weights for ``shared_random_reverse`` are those ``M_t`` keeps
        and at least one other task keeps too."""
        config = self.config
        masks = self.masks(task)
        shared = [s & m.bool() for s, m in zip(self.shared_positions(), masks, strict=True)]
        return contrastive_masks(
            masks, shared, config.contrastive, config.reverse_ratio, config.reverse_pruned
        )

    def contrastive_logit(self, x: Tensor, task: int) -> Tensor:
        """Task ``task``'s output through a fresh ``M'_t`` whose gradient reaches only ``Θ ⊙ M_t`` (and the
        MLP biases, which every subnet holds): embeddings, tower and weights outside ``M_t`` are detached."""
        masks = self.masks(task)
        hidden = self.subnet(x.detach(), self.contrastive_mask(task), trainable=masks)
        tower = self.towers[task]
        frozen = {name: p.detach() for name, p in tower.named_parameters()}
        return torch.func.functional_call(tower, frozen, (hidden,))


@register_model("csrec")
def csrec(
    features: FeatureSpec | Mapping[str, Any],
    tasks: Sequence[TaskSpec | Mapping[str, Any]],
    preset: str = "default",
    **overrides: Any,
) -> CSRec:
    """CSRec with the paper's settings (alpha 0.1, epsilon 0.4, random-reverse contrastive masks)."""
    return CSRec(features, tasks, build_config(CSRecConfig, preset, overrides))
