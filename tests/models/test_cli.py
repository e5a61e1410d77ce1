"""``python -m models train|evaluate|export`` end to end on synthetic data, early stopping, config errors."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import models.train
from models.__main__ import main
from models.data import LOADERS, Splits, load_dataset
from models.errors import ModelsError, PackageError
from models.export import export_package
from models.package import verify_package
from models.train import TrainConfig, build_model, train_seed

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


def test_train_help_lists_every_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = "".join(capsys.readouterr().out.split())  # help wraps lines, also inside hyphenated names
    assert set(LOADERS) == {"movielens", "census", "ali-ccp", "aliexpress", "synthetic", "multiflow"}
    assert "movielens|census|ali-ccp|aliexpress|synthetic|multiflow(default:synthetic)" in out


@pytest.mark.parametrize("command", ["train", "evaluate", "export"])
def test_help_says_what_a_command_does_and_shows_the_defaults_in_force(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """train's flags default to None (so that --config can set them) and its help said "(default: None)" for
    each, e.g. --patience, whose default is TrainConfig's 3; no command said what it does under its usage."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out
    about = {"train": "train one model", "evaluate": "test metrics of", "export": "write a model package"}
    assert about[command] in out.split(" options: ")[0]
    if command == "train":
        for flag, field in (("--patience", "patience"), ("--max-epochs", "max_epochs"), ("--lr", "lr")):
            shown = out.split(f"{flag} {flag[2:].upper().replace('-', '_')} ")[1]
            assert f"(default: {TrainConfig.model_fields[field].default})" in shown.split(" --")[0]
        assert "--seeds SEEDS [SEEDS ...] one run per seed (default: 0)" in out


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


def test_evaluate_on_data_with_other_columns_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--data`` of another MovieLens variant (ML-1M lacks ML-100k's genre "unknown"): a torch traceback."""
    ml100k, ml1m = tmp_path / "ml100k", tmp_path / "ml1m"
    ml100k.mkdir()
    ml1m.mkdir()
    ratings = list(enumerate([(1, 1, 5), (1, 2, 3), (2, 1, 4)] * 4))
    (ml100k / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t88125094{i}\n" for i, (u, m, r) in ratings))
    (ml100k / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = "|".join(["0", "0", "1"] + ["0"] * 16)
    items = "".join(f"{m}|M{m} (1995)|01-Jan-1995||http://x|{flags}\n" for m in (1, 2))
    (ml100k / "u.item").write_text(items)
    (ml1m / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (ml1m / "movies.dat").write_text("1::Toy Story (1995)::Animation\n2::Heat (1995)::Drama\n")
    (ml1m / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::97830{i}\n" for i, (u, m, r) in ratings))
    out = tmp_path / "run"
    args = ["train", "--model", "mmoe", "--preset", "tiny", "--dataset", "movielens", "--data", str(ml100k),
            "--max-epochs", "1", "--no-progress", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "seed0" / "checkpoint.pt"), "--data", str(ml1m)]) == 2
    err = capsys.readouterr().err
    assert f"error: {ml1m}: its columns differ from the checkpoint's: missing ['genre_unknown']" in err


def test_a_diverged_run_stops_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN loss trained on silently, and an epoch with NaN outputs scored 0 (NaN metrics are left out),
    above any real epoch whose sum(AUC) - sum(MSE) is negative: the NaN model was kept, reported, exported."""
    out = tmp_path / "run"
    args = ["train", "--model", "mmoe", "--preset", "tiny", "--max-epochs", "2", "--max-steps-per-epoch", "3",
            "--lr", "1e6", "--no-progress", "--output", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: mmoe seed 0 diverged: the loss is inf at epoch 0 step 1 (lower --lr" in err
    assert not out.exists()  # no checkpoint of a NaN model to export

    def poison(model: torch.nn.Module, epoch: int) -> dict[str, float]:
        next(model.parameters()).data.fill_(float("nan"))  # as a NaN update on an epoch's last step would
        return {}

    monkeypatch.setattr(models.train, "after_epoch", poison)
    config = TrainConfig(model="mmoe", preset="tiny", max_epochs=1, max_steps_per_epoch=1, progress=False)
    with pytest.raises(ModelsError, match="diverged: weights are NaN or infinite after epoch 0"):
        train_seed(config, load_dataset("synthetic", None), seed=0)


def test_a_single_class_validation_task_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Its AUC is NaN and early stopping leaves it out: say so, not select on the other tasks quietly."""
    splits = load_dataset("synthetic", None)
    labels = splits.val.labels.copy()
    labels[:, 0] = 1.0
    splits = Splits(splits.train, replace(splits.val, labels=labels), splits.test)
    config = TrainConfig(model="mmoe", preset="tiny", max_epochs=1, max_steps_per_epoch=1, progress=False)
    with caplog.at_level(logging.WARNING, logger="models.train"):
        result = train_seed(config, splits, seed=0)
    assert "validation labels of task 'click' hold one class only" in caplog.text
    assert np.isnan(result.val["auc/click"]) and np.isfinite(result.test["auc/click"])


def test_bad_input_is_one_line_error_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error_of(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        return err

    folder = tmp_path / "folder"
    folder.mkdir()
    assert "Is a directory" in error_of("train", "--config", str(folder))
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: mmoe\nseeds: [0\n")
    assert f"{broken}:3: invalid YAML" in error_of("train", "--config", str(broken))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert str(binary) in error_of("train", "--config", str(binary))
    no_seeds = tmp_path / "no_seeds.yaml"
    no_seeds.write_text("model: mmoe\nseeds: []\n")
    assert "seeds:" in error_of("train", "--config", str(no_seeds))  # an IndexError after training every seed
    # silently trained nothing (0 epochs, negative batch size) or failed inside torch (negative lr)
    err = error_of("train", "--model", "mmoe", "--max-epochs", "0", "--batch-size", "-1", "--lr", "-1")
    assert "max_epochs" in err and "batch_size" in err and "lr" in err
    assert "n_experts" in error_of("train", "--model", "mmoe", "--preset", "tiny", "--option", "n_experts=abc")
    # the builder's own arguments reached it twice: a TypeError traceback once the data had loaded
    err = error_of("train", "--model", "mmoe", "--option", "preset=tiny")
    assert "['preset'] are not model config fields" in err
    assert "n_experts: must be >= 0" in error_of("train", "--model", "mmoe", "--preset", "tiny", "--option", "n_experts=-1")
    # a config's own check raised a plain ValueError
    assert "at least one expert" in error_of("train", "--model", "mssm", "--preset", "tiny", "--option",
                                             "n_specific_experts=0", "--option", "n_shared_experts=0")  # fmt: skip
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert "--output" in error_of("train", "--model", "mmoe", "--preset", "tiny", "--output", str(a_file))

    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("garbage\n")
    assert "is not a checkpoint" in error_of("evaluate", str(not_a_checkpoint))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    assert "it lacks ['config'" in error_of("evaluate", str(tmp_path / "other.pt"))
    assert "is not a file" in error_of("export", str(folder), "--repository", str(tmp_path / "r"), "--name", "n",
                                       "--version", "1")  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(["--threads", "0", "train", "--model", "mmoe"])  # a RuntimeError from torch.set_num_threads
    assert info.value.code == 2 and "--threads" in capsys.readouterr().err


def test_export_refuses_names_that_leave_the_repository(tmp_path: Path) -> None:
    splits = load_dataset("synthetic", None)
    model = build_model(TrainConfig(model="mmoe", preset="tiny"), splits)
    for name in ("../elsewhere", "", ".hidden", "a/b"):
        with pytest.raises(PackageError, match="must be one folder name"):
            export_package(model, tmp_path / "repo", name, "1", family="mmoe")
    (tmp_path / "file").write_text("")
    with pytest.raises(PackageError, match="is a file, not a folder"):
        export_package(model, tmp_path / "file", "m", "1", family="mmoe")
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "repo").exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "export"])
def test_every_flag_says_what_it_does(command: str) -> None:
    """train's --batch-size and --device, and evaluate's --device, had only "(default: ...)" for help."""
    from models.__main__ import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    chosen = commands.choices[command]
    helps = {a.option_strings[-1]: a.help or "" for a in chosen._actions if a.option_strings}
    assert {"train": "--resume", "evaluate": "--device", "export": "--overwrite"}[command] in helps
    bare = [flag for flag, text in helps.items() if not text.split("(default:")[0].strip()]
    assert bare == []
