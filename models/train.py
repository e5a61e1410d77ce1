"""Training with early stopping on validation, fixed seeds, mean/std over seeds (DML section 1.6 of MODELS.md).

Adam (lr 1e-3), batch 512, sum of per-task losses (log-loss for binary, MSE for regression) plus the model's
``auxiliary_loss()`` (or the model's own ``training_loss`` hook, see models.schedules); evaluate on validation after every epoch, stop after ``patience`` epochs without a
better ``sum(AUC) - sum(MSE)``, restore the best weights, report test metrics of that checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from models.base import MultiTaskModel
from models.checkpoints import read_checkpoint
from models.data import Splits, TabularData, load_dataset
from models.errors import ModelsError
from models.evaluate import evaluate_model, markdown_table, summarize
from models.metrics import selection_score
from models.registry import create_model, model_kind
from models.schedules import after_epoch, after_step, make_optimizer, selection_ready, training_loss

logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = ("config", "features", "tasks", "state_dict")  # what load_checkpoint reads


class TrainConfig(BaseModel):
    """Everything a run needs; written next to its outputs as ``config.json``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="registry name, e.g. mmoe+dml")
    dataset: str = "synthetic"
    data: str | None = None
    preset: Literal["default", "tiny"] = "default"
    model_options: dict[str, Any] = Field(default_factory=dict)
    embedding_dim: int = Field(default=8, ge=1)
    max_epochs: int = Field(default=100, ge=1)
    patience: int = Field(default=3, ge=0)
    batch_size: int = Field(default=512, ge=1)
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    split_seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    max_steps_per_epoch: int | None = Field(default=None, ge=1)
    progress: bool = True

    @field_validator("model")
    @classmethod
    def _ranking_model(cls, name: str) -> str:
        """Only ranking models train here (an unknown name raises UnknownModelError, listing the known ones)."""
        kind = model_kind(name)
        if kind != "ranking":
            raise ValueError(
                f"{name!r} is a {kind} model; this trains ranking models (SSMTL trains on a graph through "
                "models.graph.training, as benchmarks/bench_ssmtl.py and the demo do)"
            )
        return name

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        """A repeated seed is the same run again: the mean/std would count it twice (std 0 for two), and its
        second checkpoint overwrites the first."""
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            raise ValueError(f"seeds repeat {repeated}: each seed is one run, give each once")
        return seeds

    @field_validator("model_options")
    @classmethod
    def _config_fields_only(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The builder's own arguments would reach it twice (a TypeError after the data loaded)."""
        taken = [key for key in ("features", "tasks", "preset") if key in options]
        if taken:
            raise ValueError(
                f"{taken} are not model config fields (features and tasks come from the data set, the size "
                "preset from --preset or the preset key)"
            )
        return options


@dataclass
class SeedResult:
    seed: int
    best_epoch: int
    epochs_run: int
    seconds: float
    val: dict[str, float]
    test: dict[str, float]
    model: MultiTaskModel = field(repr=False)
    # one entry per epoch: {"epoch", "val": metrics, ...whatever epoch_callback returned}
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelsError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def build_model(config: TrainConfig, splits: Splits) -> MultiTaskModel:
    return _ranking(
        create_model(
            config.model,
            features=splits.train.features,
            tasks=splits.train.tasks,
            preset=config.preset,
            **config.model_options,
        )
    )


def _ranking(model: torch.nn.Module) -> MultiTaskModel:
    """``model`` as the ranking contract (TrainConfig admits ranking models only, so this holds)."""
    if not isinstance(model, MultiTaskModel):
        raise ModelsError(f"{type(model).__name__} is not a MultiTaskModel")
    return model


EpochCallback = Callable[[int, MultiTaskModel], dict[str, Any]]


def train_seed(
    config: TrainConfig, splits: Splits, seed: int, epoch_callback: EpochCallback | None = None
) -> SeedResult:
    """Train one model from ``seed`` and return its best-validation checkpoint's metrics.

    ``epoch_callback(epoch, model)`` runs after each epoch's validation (model in eval mode); what it returns
    goes into that epoch's ``history`` entry (benchmarks record learning curves with it).
    """
    device = resolve_device(config.device)
    _warn_single_class(splits)
    set_seed(seed)
    model = build_model(config, splits).to(device)
    optimizer = make_optimizer(model, config.lr)
    rng = np.random.default_rng(seed)
    best_score, best_state, best_epoch, best_val = -math.inf, None, -1, {}
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    steps = batches_per_epoch(len(splits.train), config.batch_size)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    epoch, global_step = 0, 0
    for epoch in range(config.max_epochs):
        model.train()
        bar = tqdm(total=steps, desc=f"{config.model} seed {seed} epoch {epoch}", disable=not config.progress)
        for step, (batch, labels) in enumerate(epoch_batches(splits.train, config.batch_size, rng)):
            if step >= steps:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = training_loss(model, batch, labels.to(device), global_step)
            if not torch.isfinite(loss):
                where = f"the loss is {loss.item()} at epoch {epoch} step {step}"
                raise ModelsError(_diverged(config, seed, where))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            after_step(model, global_step)
            global_step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        bar.close()
        after_epoch(model, epoch)
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # the last step's update
            raise ModelsError(_diverged(config, seed, f"weights are NaN or infinite after epoch {epoch}"))
        val = evaluate_model(model, splits.val, device)
        logger.info("%s seed %d epoch %d: val %s", config.model, seed, epoch, val)
        history.append({"epoch": epoch, "val": val})
        if epoch_callback is not None:
            history[-1] |= epoch_callback(epoch, model)
        if not selection_ready(model):
            continue  # the model's schedule still reshapes it: no checkpoint choice yet
        score = selection_score(val)
        if score > best_score:
            best_score, best_epoch, best_val = score, epoch, val
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        _warn_nothing_selected(config, seed, model)
        best_val = evaluate_model(model, splits.val, device)
    test = evaluate_model(model, splits.test, device)
    seconds = time.perf_counter() - started
    return SeedResult(seed, best_epoch, epoch + 1, seconds, best_val, test, model.cpu(), history)


LabelledBatch = tuple[dict[str, torch.Tensor], torch.Tensor]


def epoch_batches(
    data: TabularData, batch_size: int, generator: np.random.Generator
) -> Iterator[LabelledBatch]:
    """One epoch's shuffled mini-batches, where a last batch of a single row joins the batch before it:
    BatchNorm (GRec's dense input) cannot train on one row, and 1 in ``batch_size`` data sets end so."""
    held: list[LabelledBatch] = []  # the batch before the current one, yielded once the next is known
    for batch in data.batches(batch_size, shuffle=True, generator=generator):
        if held and batch_size > 1 and len(batch[1]) == 1:
            held = [_joined(held[0], batch)]
            continue
        yield from held
        held = [batch]
    yield from held


def _joined(first: LabelledBatch, second: LabelledBatch) -> LabelledBatch:
    """The rows of ``first`` then those of ``second``, as one batch."""
    features = {key: torch.cat([value, second[0][key]]) for key, value in first[0].items()}
    return features, torch.cat([first[1], second[1]])


def batches_per_epoch(rows: int, batch_size: int) -> int:
    """How many batches ``epoch_batches`` yields for ``rows`` rows."""
    full, rest = divmod(rows, batch_size)
    return full + int(rest > 1 or (rest == 1 and full == 0))


def _diverged(config: TrainConfig, seed: int, what: str) -> str:
    """The message that stops a diverged run: going on would only train, select and export a NaN model."""
    return f"{config.model} seed {seed} diverged: {what} (lower --lr, currently {config.lr:g})"


def _warn_nothing_selected(config: TrainConfig, seed: int, model: MultiTaskModel) -> None:
    """The run keeps its last weights, which a pruning schedule may just have rewound to their initial values:
    its metrics and checkpoint may be those of an untrained model."""
    if not selection_ready(model):
        logger.warning(
            "%s seed %d: no epoch was eligible for checkpoint choice: the model's training schedule was still "
            "reshaping it after %d epochs (e.g. masks not fixed yet), so its last, possibly rewound, weights "
            "are kept; raise --max-epochs",
            config.model,
            seed,
            config.max_epochs,
        )


def _warn_single_class(splits: Splits) -> None:
    """A binary task with one class in validation has no AUC (NaN), so early stopping goes without it."""
    for t, task in enumerate(splits.val.tasks):
        if task.type == "binary" and len(np.unique(splits.val.labels[:, t])) < 2:
            logger.warning(
                "validation labels of task %r hold one class only: its AUC is undefined (NaN) and "
                "early stopping ignores it",
                task.name,
            )


def run_training(config: TrainConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Train every seed; write config, per-seed checkpoints, ``results.json`` and ``results.md`` when asked."""
    splits = load_dataset(config.dataset, config.data, config.split_seed, config.embedding_dim)
    results = [train_seed(config, splits, seed) for seed in config.seeds]
    summary = summarize(results)
    report = {
        "config": config.model_dump(),
        "summary": summary,
        "seeds": [
            {k: getattr(r, k) for k in ("seed", "best_epoch", "epochs_run", "seconds", "val", "test")}
            for r in results
        ],
    }
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(config.model_dump(), indent=2))
        (output_dir / "results.json").write_text(json.dumps(report, indent=2))
        (output_dir / "results.md").write_text(markdown_table(config.model, summary))
        for r in results:
            save_checkpoint(output_dir / f"seed{r.seed}" / CHECKPOINT, config, splits, r)
    return report


def save_checkpoint(path: Path, config: TrainConfig, splits: Splits, result: SeedResult) -> None:
    """Weights plus what export needs to rebuild the model and describe its inputs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full = splits.full()
    item_features = full.item_features()
    torch.save(
        {
            "config": config.model_dump(),
            "seed": result.seed,
            "features": splits.train.features.to_dict(),
            "tasks": [{"name": t.name, "type": t.type} for t in splits.train.tasks],
            "manifest_features": splits.train.manifest_features(),
            "item_features": item_features,
            "metrics": result.test,
            "state_dict": result.model.state_dict(),
        },
        path,
    )


def load_checkpoint(path: Path) -> tuple[MultiTaskModel, dict[str, Any]]:
    """Rebuild the trained model (eval mode) and return it with the checkpoint's metadata."""
    payload = read_checkpoint(path, CHECKPOINT_KEYS, "python -m models train --output")
    try:
        config = TrainConfig(**payload["config"])
        model = _ranking(
            create_model(
                config.model,
                features=payload["features"],
                tasks=payload["tasks"],
                preset=config.preset,
                **config.model_options,
            )
        )
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:  # ValueError covers pydantic's ValidationError
        raise ModelsError(f"{path}: cannot rebuild the model of this checkpoint: {exc}") from None
    return model.eval(), payload
