"""The training loop's mini-batches, its end when no epoch could be chosen (models.train), and the pruning
schedule that decides when choosing starts (models.schedules)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from models.__main__ import main
from models.data import Splits, load_dataset
from models.errors import ModelsError
from models.schedules import expected_prune_rounds, magnitude_prune, sparsity
from models.train import TrainConfig, batches_per_epoch, epoch_batches, train_seed


def small_splits(train_rows: int) -> Splits:
    """The synthetic data set cut down so that a training run takes a moment."""
    splits = load_dataset("synthetic", None)
    parts = zip((splits.train, splits.val, splits.test), (train_rows, 200, 200), strict=True)
    return Splits(*(split.subset(np.arange(rows)) for split, rows in parts))


def test_a_last_batch_of_one_row_joins_the_batch_before_it() -> None:
    data = small_splits(11).train
    batches = list(epoch_batches(data, 5, np.random.default_rng(0)))
    assert [len(labels) for _, labels in batches] == [5, 6] and batches_per_epoch(11, 5) == 2
    rows = torch.cat([features["sparse"] for features, _ in batches]).numpy()
    assert sorted(map(tuple, rows)) == sorted(map(tuple, data.sparse))  # every row once, as before
    labels = torch.cat([labels for _, labels in batches]).numpy()
    assert sorted(map(tuple, labels)) == sorted(map(tuple, data.labels))
    # batches of one row by choice stay so, and other sizes are untouched
    assert [len(labels) for _, labels in epoch_batches(data, 1, np.random.default_rng(0))] == [1] * 11
    assert [len(labels) for _, labels in epoch_batches(data, 4, np.random.default_rng(0))] == [4, 4, 3]
    assert [batches_per_epoch(n, b) for n, b in ((11, 1), (11, 4), (1, 5), (10, 5))] == [11, 3, 1, 2]


def test_grec_trains_when_the_last_batch_has_one_row() -> None:
    """GRec's BatchNorm raised "Expected more than 1 value per channel when training" (a traceback from the
    command line) whenever the training rows were 1 more than a multiple of the batch size."""
    config = TrainConfig(model="grec", preset="tiny", max_epochs=1, batch_size=32, progress=False)
    result = train_seed(config, small_splits(65), seed=0)
    assert result.best_epoch == 0 and np.isfinite(result.val["mse/rating"])


def test_a_run_that_could_choose_no_epoch_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """Checkpoint choice waits until every pruning mask is fixed; a run that ends before kept its last weights,
    possibly just rewound to their initial values, and reported and saved them without a word."""
    config = TrainConfig(model="sparse-sharing", preset="tiny", max_epochs=1, batch_size=64, progress=False)
    with caplog.at_level(logging.WARNING, logger="models.train"):
        result = train_seed(config, small_splits(256), seed=0)
    assert result.best_epoch == -1
    assert "sparse-sharing seed 0: no epoch was eligible for checkpoint choice" in caplog.text
    assert "raise --max-epochs" in caplog.text


def test_a_prune_round_prunes_at_least_one_live_weight() -> None:
    """round(alpha * alive) was 0 for a small alpha (or a small subnet): the round pruned nothing, every later
    round did the same, the mask never became final (no checkpoint was ever chosen) and
    expected_prune_rounds looped for ever."""
    weights = [torch.arange(100, dtype=torch.float32).reshape(10, 10)]
    masks = [torch.ones(10, 10)]
    masks[0].view(-1)[:10] = 0  # 90 live weights: round(0.005 * 90) = 0
    assert magnitude_prune(weights, masks, 0.005) == 1
    assert sparsity(masks) == pytest.approx(0.11) and masks[0].view(-1)[10] == 0  # the smallest live one
    assert expected_prune_rounds(100, 90, 0.005, 0.4) == 31  # one a round until 59 are left
    assert expected_prune_rounds(1000, 900, 0.1, 0.4) == 4  # where round() prunes some, as before


def test_a_repeated_seed_is_refused_naming_it() -> None:
    """``--seeds 0 0`` trained the same run twice, reported std 0.0000 over "2" seeds and wrote one checkpoint."""
    with pytest.raises(ValueError, match=r"seeds repeat \[0\]"):
        TrainConfig(model="mmoe", seeds=[0, 1, 0])
    assert TrainConfig(model="mmoe", seeds=[2, 0, 1]).seeds == [2, 0, 1]


def test_batches_of_one_row_are_refused_for_a_model_with_batch_norm(capsys: pytest.CaptureFixture) -> None:
    """``--batch-size 1`` for GRec (BatchNorm on its dense features) ended in a torch traceback at the first
    step: "Expected more than 1 value per channel when training"."""
    args = ["train", "--model", "grec", "--preset", "tiny", "--batch-size", "1", "--max-epochs", "1",
            "--max-steps-per-epoch", "2", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "error: --batch-size 1: grec has BatchNorm layers (wide.0), which cannot train on batches of one "
        "row; use --batch-size 2 or more\n"
    )
    config = TrainConfig(model="grec", preset="tiny", max_epochs=1, batch_size=32, progress=False)
    with pytest.raises(ModelsError, match="^a training split of one row: grec has BatchNorm layers"):
        train_seed(config, small_splits(1), seed=0)
    # a model without BatchNorm trains on rows one at a time as before
    config = TrainConfig(model="mmoe", preset="tiny", max_epochs=1, batch_size=1, max_steps_per_epoch=3,
                         progress=False)  # fmt: skip
    assert train_seed(config, small_splits(5), seed=0).epochs_run == 1
