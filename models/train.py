"""Training with early stopping on validation, fixed seeds, mean/std over seeds (DML section 1.6 of MODELS.md).

Adam (lr 1e-3), batch 512, sum of per-task losses (log-loss for binary, MSE for regression) plus the model's
``auxiliary_loss()`` (or the model's own ``training_loss`` hook, see models.schedules); evaluate on validation after every epoch, stop after ``patience`` epochs without a
better ``sum(AUC) - sum(MSE)``, restore the best weights, report test metrics of that checkpoint. A run
with an output folder saves its state after every epoch there, and ``resume`` continues it to the result of
a run never stopped (models/README.md).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
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
from models.checkpoints import (
    config_differences,
    load_module_state,
    module_state,
    read_checkpoint,
    restore_rng_states,
    rng_states,
    write_atomically,
)
from models.data import Splits, TabularData, load_dataset
from models.errors import ModelsError
from models.evaluate import evaluate_model, markdown_table, summarize
from models.metrics import selection_score
from models.registry import create_model, model_kind
from models.schedules import (
    Optimizer,
    after_epoch,
    after_step,
    make_optimizer,
    selection_ready,
    training_loss,
)

logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = ("config", "features", "tasks", "state_dict")  # what load_checkpoint reads
STATE_DIR = "training_state"  # under --output: each seed's resumable state, until the outputs exist
STATE_FORMAT = 1  # of those states; a resume refuses another
STATE_KEYS = ("format", "config", "seed", "finished")


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


@dataclass
class SeedProgress:
    """Where one seed's run stands after its last finished epoch: what the next epoch and the final choice
    read. Saved with the model, optimizer and random streams after every epoch, it is what a resumed run
    continues from (``train_seed``'s ``resume_state``)."""

    epoch: int = -1  # the last finished epoch
    global_step: int = 0
    stopped: bool = False  # early stopping ended the run after ``epoch``
    best_score: float = -math.inf
    best_epoch: int = -1
    best_val: dict[str, float] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training time before this process, for a resumed run


def train_seed(
    config: TrainConfig,
    splits: Splits,
    seed: int,
    epoch_callback: EpochCallback | None = None,
    state_file: Path | None = None,
    resume_state: dict[str, Any] | None = None,
) -> SeedResult:
    """Train one model from ``seed`` and return its best-validation checkpoint's metrics.

    ``epoch_callback(epoch, model)`` runs after each epoch's validation (model in eval mode); what it returns
    goes into that epoch's ``history`` entry (benchmarks record learning curves with it). With ``state_file``,
    the state after every epoch is written there (``write_atomically``); ``resume_state``, such a state read
    back, continues that run where it stopped, with the result of a run never stopped (bit for bit on CPU).
    """
    device = resolve_device(config.device)
    _warn_single_class(splits)
    set_seed(seed)
    model = build_model(config, splits).to(device)
    _require_batches_normalisable(config, model, len(splits.train))
    optimizer = make_optimizer(model, config.lr)
    rng = np.random.default_rng(seed)
    progress = SeedProgress()
    if resume_state is not None:
        progress = _resume(resume_state, model, optimizer, rng, device)
    started = time.perf_counter() - progress.seconds
    steps = batches_per_epoch(len(splits.train), config.batch_size)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    remaining = range(0) if progress.stopped else range(progress.epoch + 1, config.max_epochs)
    for epoch in remaining:
        model.train()
        bar = tqdm(total=steps, desc=f"{config.model} seed {seed} epoch {epoch}", disable=not config.progress)
        for step, (batch, labels) in enumerate(epoch_batches(splits.train, config.batch_size, rng)):
            if step >= steps:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = training_loss(model, batch, labels.to(device), progress.global_step)
            if not torch.isfinite(loss):
                where = f"the loss is {loss.item()} at epoch {epoch} step {step}"
                raise ModelsError(_diverged(config, seed, where))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            after_step(model, progress.global_step)
            progress.global_step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        bar.close()
        after_epoch(model, epoch)
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # the last step's update
            raise ModelsError(_diverged(config, seed, f"weights are NaN or infinite after epoch {epoch}"))
        val = evaluate_model(model, splits.val, device)
        logger.info("%s seed %d epoch %d: val %s", config.model, seed, epoch, val)
        progress.history.append({"epoch": epoch, "val": val})
        if epoch_callback is not None:
            progress.history[-1] |= epoch_callback(epoch, model)
        progress.epoch = epoch
        if selection_ready(model):  # else the model's schedule still reshapes it: no checkpoint choice yet
            _choose(progress, model, val, config.patience)
        if state_file is not None:
            progress.seconds = time.perf_counter() - started
            _save_progress(state_file, config, seed, progress, model, optimizer, rng, device)
        if progress.stopped:
            break
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
    else:
        _warn_nothing_selected(config, seed, model)
        progress.best_val = evaluate_model(model, splits.val, device)
    test = evaluate_model(model, splits.test, device)
    seconds = time.perf_counter() - started
    return SeedResult(
        seed,
        progress.best_epoch,
        progress.epoch + 1,
        seconds,
        progress.best_val,
        test,
        model.cpu(),
        progress.history,
    )


def _require_batches_normalisable(config: TrainConfig, model: MultiTaskModel, rows: int) -> None:
    """BatchNorm1d cannot train on a batch of one row (torch raises "Expected more than 1 value per channel
    when training" at the first step, a traceback from the command line): refuse such batches before
    training. A last batch of one row joins the one before it (``epoch_batches``), so only ``--batch-size 1``
    or a training split of one row make them."""
    norms = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm1d)]
    if not norms or min(config.batch_size, rows) > 1:
        return
    why = "--batch-size 1" if config.batch_size == 1 else "a training split of one row"
    raise ModelsError(
        f"{why}: {config.model} has BatchNorm layers ({', '.join(norms)}), which cannot train on batches of "
        "one row; use --batch-size 2 or more"
    )


def _choose(progress: SeedProgress, model: MultiTaskModel, val: dict[str, float], patience: int) -> None:
    """Early stopping: keep the weights of the best validation score so far, stop ``patience`` epochs after
    it."""
    score = selection_score(val)
    if score > progress.best_score:
        progress.best_score, progress.best_epoch, progress.best_val = score, progress.epoch, val
        progress.best_state = copy.deepcopy(model.state_dict())
    elif progress.epoch - progress.best_epoch >= patience:
        progress.stopped = True


def _save_progress(
    path: Path,
    config: TrainConfig,
    seed: int,
    progress: SeedProgress,
    model: MultiTaskModel,
    optimizer: Optimizer,
    rng: np.random.Generator,
    device: torch.device,
) -> None:
    """The state after an epoch: everything the next one depends on (see ``SeedProgress``)."""
    state = {
        "progress": vars(progress),
        "model": module_state(model),
        "optimizer": optimizer.state_dict(),
        "rng": rng_states(rng, device),
    }
    write_atomically(path, _state_payload(config, seed, finished=False, **state))


def _resume(
    state: dict[str, Any],
    model: MultiTaskModel,
    optimizer: Optimizer,
    rng: np.random.Generator,
    device: torch.device,
) -> SeedProgress:
    """Put ``model``, ``optimizer`` and the random streams back where ``_save_progress`` found them."""
    try:
        load_module_state(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise _unfit_state(state, exc) from None
    restore_rng_states(state["rng"], rng, device)
    return SeedProgress(**state["progress"])


def _unfit_state(state: dict[str, Any], exc: Exception) -> ModelsError:
    """A state of the same config whose tensors do not fit the model it builds (the code changed since)."""
    return ModelsError(
        f"--resume: the training state of seed {state['seed']} does not fit the model this code builds "
        f"({type(exc).__name__}: {exc}); delete the {STATE_DIR} folder to start over"
    )


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


def run_training(config: TrainConfig, output_dir: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Train every seed; write config, per-seed checkpoints, ``results.json`` and ``results.md`` when asked.

    With ``output_dir``, the state after every epoch goes to ``<output_dir>/training_state/`` (removed once
    the outputs are written); ``resume`` continues the run that left it there, which must have had the same
    config (``--no-progress`` aside). Without ``resume``, a state there is refused: it is the work of an
    interrupted run, which a new run would overwrite.
    """
    states = _read_states(config, output_dir, resume)
    splits = load_dataset(config.dataset, config.data, config.split_seed, config.embedding_dim)
    results = [_seed_result(config, splits, seed, output_dir, states.get(seed)) for seed in config.seeds]
    summary = summarize(results)
    report = {
        "config": config.model_dump(),
        "summary": summary,
        "seeds": [_reported(r) for r in results],
    }
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(config.model_dump(), indent=2))
        (output_dir / "results.json").write_text(json.dumps(report, indent=2))
        (output_dir / "results.md").write_text(markdown_table(config.model, summary))
        for r in results:
            save_checkpoint(output_dir / f"seed{r.seed}" / CHECKPOINT, config, splits, r)
        shutil.rmtree(output_dir / STATE_DIR, ignore_errors=True)
    return report


def _reported(result: SeedResult) -> dict[str, Any]:
    """What ``results.json`` says of one seed (a finished seed's state keeps it too)."""
    return {k: getattr(result, k) for k in ("seed", "best_epoch", "epochs_run", "seconds", "val", "test")}


def has_training_state(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds the state of a run that has not written its outputs yet."""
    return any((output_dir / STATE_DIR).glob("seed*.pt"))


def _state_file(output_dir: Path, seed: int) -> Path:
    return output_dir / STATE_DIR / f"seed{seed}.pt"


def _state_payload(config: TrainConfig, seed: int, finished: bool, **state: Any) -> dict[str, Any]:
    """A seed's state file: the config it belongs to (a resume with another is refused), then ``state``."""
    config_dump = config.model_dump()
    return {"format": STATE_FORMAT, "config": config_dump, "seed": seed, "finished": finished, **state}


def _read_states(config: TrainConfig, output_dir: Path | None, resume: bool) -> dict[int, dict[str, Any]]:
    """The per-seed states a run continues from, by seed: none without ``resume``, where a state left in
    ``output_dir`` is refused; with ``resume``, each must be of this config."""
    if output_dir is None:
        if resume:
            raise ModelsError("--resume needs --output, the folder of the run to continue")
        return {}
    folder = output_dir / STATE_DIR
    if not resume:
        if has_training_state(output_dir):
            raise ModelsError(
                f"{folder} holds the state of an interrupted run: add --resume to continue it, or delete "
                "that folder to start over"
            )
        return {}
    states = {}
    for path in sorted(folder.glob("seed*.pt")):
        state = read_checkpoint(path, STATE_KEYS, "python -m models train --output")
        differences = config_differences(state["config"], config.model_dump(), ignored=("progress",))
        if state["format"] != STATE_FORMAT or differences:
            what = "; ".join(differences) or f"format {state['format']}, this version reads {STATE_FORMAT}"
            raise ModelsError(
                f"--resume: {path} was written by a run with another config ({what}): resume with that "
                f"config, or delete {folder} to start over"
            )
        states[int(state["seed"])] = state
    if not states:
        logger.warning("--resume: %s holds no training state: training from the first epoch", folder)
    return states


def _seed_result(
    config: TrainConfig, splits: Splits, seed: int, output_dir: Path | None, state: dict[str, Any] | None
) -> SeedResult:
    """Seed ``seed``'s result: read back from a finished state, else trained (on from an unfinished one);
    with ``output_dir``, the finished result is saved as that seed's state until the run's outputs are."""
    if state is not None and state["finished"]:
        return _finished_result(config, splits, state)
    state_file = None if output_dir is None else _state_file(output_dir, seed)
    result = train_seed(config, splits, seed, state_file=state_file, resume_state=state)
    if state_file is not None:
        summary = _reported(result) | {"history": result.history}
        payload = _state_payload(config, seed, True, result=summary, state_dict=result.model.state_dict())
        write_atomically(state_file, payload)
    return result


def _finished_result(config: TrainConfig, splits: Splits, state: dict[str, Any]) -> SeedResult:
    """The result a finished state holds, with its model rebuilt (eval mode, on the CPU, as trained ones)."""
    model = build_model(config, splits)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise _unfit_state(state, exc) from None
    result = dict(state["result"])
    history = result.pop("history")
    return SeedResult(**result, model=model.eval(), history=history)


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
