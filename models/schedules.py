"""Training schedules that change a model while it trains, and the hook protocol a trainer drives them through.

A trainer must never branch on model classes (STYLE.md). Models whose training is more than "forward, sum the
task losses, add ``auxiliary_loss()``" (CSRec's alternating contrastive steps, magnitude pruning with weight
rewinding) implement the optional methods of ``TrainingHooks``; the functions below call them when present and
fall back to the plain behaviour otherwise, so one training loop serves the whole zoo:

    optimizer = make_optimizer(model, lr)      # Adam unless the model needs its own (CSRec: one per task)
    loss = training_loss(model, batch, labels, step)
    loss.backward(); optimizer.step()
    metrics = after_step(model, step)          # values to log
    ...
    metrics = after_epoch(model, epoch)        # may prune masks / rewind weights, returns values to log
    if selection_ready(model): consider early stopping / keep the best checkpoint

The pruning part is Algorithm 1 of CSRec (Bai et al., WWW'22) with the pruning operation of sparse sharing
(Sun et al., AAAI'20) it follows: a round trains the network for ``round_epochs`` epochs, then every task
prunes ``alpha`` of the remaining weights of its subnet by magnitude; while some subnet's sparsity is still at
most ``epsilon``, every parameter is rewound to its initial value and the optimizer restarts (the sparse-sharing
code restores its whole initial state dict and builds a new optimizer each round); the prune that takes a
subnet's sparsity above ``epsilon`` fixes its mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from models.base import MultiTaskModel, task_losses


class Optimizer(Protocol):
    """What a trainer calls on an optimizer (``torch.optim.Optimizer`` or a model's own, see make_optimizer)."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...  # what a resumed run (models.train) continues from

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@runtime_checkable
class TrainingHooks(Protocol):
    """Optional model methods a trainer calls (all of them; a model may define any subset)."""

    def make_optimizer(self, lr: float) -> Optimizer: ...

    def training_loss(self, batch: Mapping[str, Tensor], labels: Tensor, step: int) -> Tensor: ...

    def on_step(self, step: int) -> dict[str, float]: ...

    def on_epoch_end(self, epoch: int) -> dict[str, float]: ...

    def selection_ready(self) -> bool: ...


def default_training_loss(model: MultiTaskModel, batch: Mapping[str, Tensor], labels: Tensor) -> Tensor:
    """The zoo's plain objective: the sum of the per-task losses plus the model's auxiliary loss."""
    outputs = model(batch)
    return task_losses(outputs, labels, model.tasks).sum() + model.auxiliary_loss()


def make_optimizer(model: nn.Module, lr: float) -> Optimizer:
    """The model's own optimizer if it defines one (it may need to reset or split it), else Adam over all
    parameters."""
    hook = getattr(model, "make_optimizer", None)
    return hook(lr) if hook is not None else torch.optim.Adam(model.parameters(), lr=lr)


def training_loss(model: MultiTaskModel, batch: Mapping[str, Tensor], labels: Tensor, step: int) -> Tensor:
    """Loss of one optimizer step ``step`` (0-based): the model's own ``training_loss`` if it has one."""
    hook = getattr(model, "training_loss", None)
    return hook(batch, labels, step) if hook is not None else default_training_loss(model, batch, labels)


def after_step(model: nn.Module, step: int) -> dict[str, float]:
    """Call after ``optimizer.step()`` of step ``step``; returns metrics to log (may be empty)."""
    hook = getattr(model, "on_step", None)
    return hook(step) if hook is not None else {}


def after_epoch(model: nn.Module, epoch: int) -> dict[str, float]:
    """Call at the end of epoch ``epoch`` (0-based); returns metrics to log (may be empty)."""
    hook = getattr(model, "on_epoch_end", None)
    return hook(epoch) if hook is not None else {}


def selection_ready(model: nn.Module) -> bool:
    """False while the model's schedule still reshapes it (early stopping and checkpoint choice must wait)."""
    hook = getattr(model, "selection_ready", None)
    return bool(hook()) if hook is not None else True


@dataclass(frozen=True)
class PruningSchedule:
    """Algorithm 1's knobs: after every ``round_epochs`` epochs of training, prune ``alpha`` of the remaining
    weights of each subnet until its sparsity exceeds ``epsilon``; ``rewind`` resets the parameters to their
    initial values after a round that leaves some subnet at most ``epsilon`` sparse (line 13)."""

    alpha: float = 0.1
    epsilon: float = 0.4
    round_epochs: int = 5
    rewind: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"pruning alpha must be in (0, 1), got {self.alpha}")
        if not 0 <= self.epsilon < 1:
            raise ValueError(f"pruning epsilon must be in [0, 1), got {self.epsilon}")
        if self.round_epochs < 1:
            raise ValueError(f"pruning round_epochs must be >= 1 epoch, got {self.round_epochs}")


def sparsity(masks: Sequence[Tensor]) -> float:
    """Fraction of zero entries over all masks (Algorithm 1, line 12)."""
    total = sum(m.numel() for m in masks)
    zeros = sum(int((m == 0).sum()) for m in masks)
    return zeros / total


def expected_prune_rounds(n_weights: int, n_alive: int, alpha: float, epsilon: float) -> int:
    """How many prune rounds Algorithm 1 takes from ``n_alive`` live weights until sparsity > ``epsilon``."""
    rounds = 0
    while 1 - n_alive / n_weights <= epsilon:
        n_alive -= prune_count(n_alive, alpha)
        rounds += 1
    return rounds


def prune_count(n_alive: int, alpha: float) -> int:
    """How many of ``n_alive`` live weights a round prunes: ``round(alpha * n_alive)``, but at least one, since
    a round that prunes none leaves the sparsity where it is and every later round does the same (the mask
    never reaches ``epsilon``, so checkpoint choice never starts)."""
    return min(n_alive, max(1, round(alpha * n_alive)))


@torch.no_grad()
def magnitude_prune(weights: Sequence[Tensor], masks: Sequence[Tensor], alpha: float) -> int:
    """Zero, in ``masks`` (in place), ``prune_count(alive, alpha)`` of the live entries with the smallest
    ``|weight|``, ranked globally over all layers (the subnet's parameters, line 11). Returns how many were
    pruned."""
    scores = torch.cat(
        [
            torch.where(m.bool(), w.abs(), torch.full_like(w, float("inf"))).flatten()
            for w, m in zip(weights, masks, strict=True)
        ]
    )
    alive = int(sum(int(m.sum()) for m in masks))
    n_prune = prune_count(alive, alpha)
    if n_prune == 0:
        return 0
    flat_index = torch.topk(scores, n_prune, largest=False).indices
    offset = 0
    for mask in masks:
        local = flat_index[(flat_index >= offset) & (flat_index < offset + mask.numel())] - offset
        mask.view(-1)[local] = 0
        offset += mask.numel()
    return n_prune
