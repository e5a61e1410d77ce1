"""``python -m models train|evaluate|export`` end to end on synthetic data, early stopping, config errors."""

import json
from pathlib import Path

import pytest

from models.__main__ import main
from models.data import load_dataset
from models.package import verify_package
from models.train import TrainConfig, train_seed

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_train_evaluate_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", "mmoe+dml", "--preset", "tiny", "--max-epochs", "2", "--seeds", "0", "1",
            "--max-steps-per-epoch", "4", "--no-progress", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| mmoe+dml | auc/click |" in table and "| 2 |" in table
    report = json.loads((out / "results.json").read_text())
    assert set(report["summary"]) == {"auc/click", "mse/rating"} and len(report["seeds"]) == 2
    assert (out / "results.md").exists() and json.loads((out / "config.json").read_text())[
        "model"
    ] == "mmoe+dml"

    assert main(["evaluate", str(out / "seed0" / "checkpoint.pt")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics == pytest.approx(report["seeds"][0]["test"])

    repo = tmp_path / "repo"
    assert main(["export", str(out / "seed1" / "checkpoint.pt"), "--repository", str(repo), "--name", "r",
                 "--version", "1"]) == 0  # fmt: skip
    manifest = verify_package(repo / "r" / "1", check_golden=True)
    assert manifest.family == "mmoe+dml" and manifest.metrics == pytest.approx(report["seeds"][1]["test"])
    assert manifest.training_config["seeds"] == [0, 1]
    assert (repo / "r" / "1" / "item_features.npz").exists()


def test_config_errors_exit_non_zero_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--model", "nope", "--preset", "tiny", "--max-epochs", "1"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    config = tmp_path / "train.yaml"
    config.write_text("model: mmoe\nbatch_sise: 12\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "batch_sise" in err
    assert main(["train", "--model", "mmoe", "--option", "n_expert=2", "--max-epochs", "1"]) == 2
    assert "n_expert" in capsys.readouterr().err
    # the registry also holds the retrieval model, which trains on a graph elsewhere (it crashed with a TypeError)
    assert main(["train", "--model", "ssmtl", "--preset", "tiny", "--max-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "'ssmtl' is a retrieval model; this trains ranking models" in err and "Traceback" not in err


def test_train_help_lists_ranking_models_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "mmoe+dml" in out and "grec" in out and "ssmtl" not in out


def test_early_stopping_keeps_the_best_epoch() -> None:
    splits = load_dataset("synthetic", None)
    config = TrainConfig(model="shared-bottom", preset="tiny", max_epochs=30, patience=1, lr=0.05,
                         max_steps_per_epoch=3, progress=False)  # fmt: skip
    result = train_seed(config, splits, seed=0)
    assert result.epochs_run < 30  # stopped early
    assert result.epochs_run - 1 - result.best_epoch == 1  # exactly `patience` epochs after the best one


def test_history_has_every_epoch_and_what_the_callback_returns() -> None:
    splits = load_dataset("synthetic", None)
    config = TrainConfig(model="mmoe+dml", preset="tiny", max_epochs=3, patience=3, max_steps_per_epoch=2,
                         progress=False)  # fmt: skip
    seen = []

    def callback(epoch, model):
        seen.append(model.training)
        return {"test": {"epoch_twice": 2.0 * epoch}}

    result = train_seed(config, splits, seed=0, epoch_callback=callback)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert [h["test"]["epoch_twice"] for h in result.history] == [0.0, 2.0, 4.0]
    assert set(result.history[0]["val"]) == set(result.val) and seen == [False] * 3
