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
0 to 1" of section 2.2.2), ``shared_random_reverse`` drops only weights every task shares.

Only the subnet learns from the contrast (Algorithm 1, line 10 updates ``Θ ⊙ M_t``): in the contrastive pass
the input embeddings, the task tower and every weight outside ``M_t`` are constants, so the ``- loss_r(M'_t)``
term cannot be lowered by moving them (e.g. by growing pruned weights that a 0 -> 1 flip switches on). After its ``prune_every``-th own step a task prunes ``alpha`` of its remaining weights by
magnitude, rewinding Θ to Θ^(0) until its sparsity exceeds ``epsilon`` (lines 11-18).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from models.base import Batch, build_config, task_losses
from models.layers import FeatureSpec, TaskSpec
from models.registry import register_model
from models.sparse_sharing import MaskedSharingConfig, MaskedSharingModel


def log_loss_ratio(loss: Tensor) -> Tensor:
    """Eq. 5: ``sigmoid(ln loss)`` (= loss / (1 + loss)), a bounded transform of the task loss."""
    return torch.sigmoid(torch.log(loss))


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


class CSRec(MaskedSharingModel):
    """Sparse-sharing network trained by Algorithm 1 (alternating tasks, contrastive loss, pruning)."""

    def objective(self, batch: Batch, labels: Tensor, step: int) -> Tensor:
        """Eq. 6 for task ``step mod T`` on this mini-batch."""
        task = step % self.n_tasks
        x = self.embedding(batch["sparse"], batch["dense"])
        masks = self.masks(task)
        spec = [self.tasks[task]]
        y = labels[:, task : task + 1]
        positive_loss = task_losses(self.task_logit(x, task, masks).unsqueeze(1), y, spec).sum()
        negative_loss = task_losses(self.contrastive_logit(x, task).unsqueeze(1), y, spec).sum()
        return contrastive_loss(positive_loss, negative_loss)

    def contrastive_logit(self, x: Tensor, task: int) -> Tensor:
        """Task ``task``'s output through a fresh ``M'_t`` whose gradient reaches only ``Θ ⊙ M_t`` (and the
        MLP biases, which every subnet holds): embeddings, tower and weights outside ``M_t`` are detached."""
        config = self.config
        masks = self.masks(task)
        negative = contrastive_masks(
            masks, self.shared_positions(), config.contrastive, config.reverse_ratio, config.reverse_pruned
        )
        hidden = self.subnet(x.detach(), negative, trainable=masks)
        tower = self.towers[task]
        frozen = {name: p.detach() for name, p in tower.named_parameters()}
        return torch.func.functional_call(tower, frozen, (hidden,))

    def tasks_to_prune(self, step: int) -> list[int]:
        """Alternating training: the task of this step prunes after every ``every``-th of its own steps."""
        return [step % self.n_tasks] if (step // self.n_tasks + 1) % self.schedule.every == 0 else []


@register_model("csrec")
def csrec(
    features: FeatureSpec | Mapping[str, Any],
    tasks: Sequence[TaskSpec | Mapping[str, Any]],
    preset: str = "default",
    **overrides: Any,
) -> CSRec:
    """CSRec with the paper's settings (alpha 0.1, epsilon 0.4, random-reverse contrastive masks)."""
    return CSRec(features, tasks, build_config(MaskedSharingConfig, preset, overrides))
