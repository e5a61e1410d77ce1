"""A training run stopped after some epochs (crash, Ctrl-C, SIGKILL) and resumed ends exactly where one never
stopped ends (models.train's state after every epoch, ``python -m models train --resume``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import models.train
from models.__main__ import main
from models.errors import ModelsError
from models.train import STATE_DIR, TrainConfig, run_training

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """As ``python -m models`` trains (``--threads 1``); also keeps these runs quick on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config_of(model: str, **overrides: Any) -> TrainConfig:
    """Two seeds of a few short epochs; lr 0.05 with patience 1 makes early stopping end some seeds (for
    mmoe+dml and grec), so the resumed runs carry its best score, weights and epoch across the stop."""
    values = {"model": model, "preset": "tiny", "max_epochs": 8, "patience": 1, "lr": 0.05, "batch_size": 64,
              "max_steps_per_epoch": 3, "seeds": [0, 1], "progress": False} | overrides  # fmt: skip
    return TrainConfig(**values)


class EpochCounter:
    """Stands in for models.train.after_epoch: counts the epochs trained, raises ``error`` at the end of the
    ``stop_at``-th one (before its state is saved, as a crash in the middle of an epoch)."""

    def __init__(self, stop_at: int | None = None, error: BaseException | None = None) -> None:
        self.calls, self.stop_at, self.error = 0, stop_at, error
        self.hook = models.train.after_epoch

    def __call__(self, model: torch.nn.Module, epoch: int) -> dict[str, float]:
        self.calls += 1
        if self.calls == self.stop_at and self.error is not None:
            raise self.error
        return self.hook(model, epoch)


def results_of(output: Path) -> dict[str, Any]:
    """results.json without the wall-clock seconds, and every seed checkpoint's tensors."""
    report = json.loads((output / "results.json").read_text())
    for seed in report["seeds"]:
        seed.pop("seconds")
    checkpoints = {
        seed: torch.load(output / f"seed{seed}" / "checkpoint.pt", weights_only=False)
        for seed in report["config"]["seeds"]
    }
    return {"report": report, "checkpoints": checkpoints}


def assert_same_results(resumed: dict[str, Any], full: dict[str, Any]) -> None:
    """Equal reports (metrics, best and last epochs) and bit-identical weights, buffers (masks) included."""
    assert resumed["report"] == full["report"]
    for seed, checkpoint in full["checkpoints"].items():
        other = resumed["checkpoints"][seed]
        assert other["metrics"] == checkpoint["metrics"]
        assert other["state_dict"].keys() == checkpoint["state_dict"].keys()
        for name, tensor in checkpoint["state_dict"].items():
            assert torch.equal(other["state_dict"][name], tensor), f"seed {seed} {name}"


@pytest.mark.parametrize(
    ("model", "stop_after"),
    [
        ("mmoe+dml", None),  # seed 1's second epoch (early stopping under way in both seeds)
        ("grec", 3),  # BatchNorm running statistics, router jitter drawn from torch's stream
        ("csrec", 3),  # seed 0 between pruning rounds: masks, rewind weights
        ("csrec", 6),  # seed 0 after its masks are final: one Adam per task, no rewinds any more
        ("sparse-sharing", 2),
    ],
)
def test_a_run_that_crashed_resumes_to_the_result_of_a_run_never_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, stop_after: int | None
) -> None:
    """A run killed after hours of training lost all of them: nothing was saved before the last seed ended."""
    config = config_of(model)
    counter = EpochCounter()
    monkeypatch.setattr(models.train, "after_epoch", counter)
    full_report = run_training(config, tmp_path / "full")
    full, epochs = results_of(tmp_path / "full"), counter.calls
    assert not (tmp_path / "full" / STATE_DIR).exists()  # removed once the outputs are written
    first_seed_epochs = full_report["seeds"][0]["epochs_run"]
    stop_at = stop_after or first_seed_epochs + 2  # default: in seed 1, after its first epoch was saved

    crash = EpochCounter(stop_at, RuntimeError("crash"))
    monkeypatch.setattr(models.train, "after_epoch", crash)
    with pytest.raises(RuntimeError, match="crash"):
        run_training(config, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / STATE_DIR).iterdir()) == (
        ["seed0.pt", "seed1.pt"] if stop_at > first_seed_epochs else ["seed0.pt"]
    )

    resumed = EpochCounter()
    monkeypatch.setattr(models.train, "after_epoch", resumed)
    run_training(config, tmp_path / "run", resume=True)
    assert resumed.calls == epochs - (stop_at - 1)  # on from the last saved epoch, not from the start
    assert_same_results(results_of(tmp_path / "run"), full)
    assert not (tmp_path / "run" / STATE_DIR).exists()


def test_ctrl_c_leaves_a_state_and_says_how_to_resume_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C ended the run with a traceback and nothing kept."""
    args = ["train", "--model", "mmoe+dml", "--preset", "tiny", "--max-epochs", "4", "--lr", "0.05",
            "--batch-size", "64", "--max-steps-per-epoch", "3", "--seeds", "0", "1",
            "--no-progress"]  # fmt: skip
    assert main([*args, "--output", str(tmp_path / "full")]) == 0
    full = results_of(tmp_path / "full")

    run = tmp_path / "run"
    monkeypatch.setattr(models.train, "after_epoch", EpochCounter(2, KeyboardInterrupt()))
    assert main([*args, "--output", str(run)]) == 130
    err = capsys.readouterr().err
    resume = ["python", "-m", "models", *args, "--output", str(run), "--resume"]
    assert err == (
        f"interrupted: {run / STATE_DIR} holds the state after the last finished epoch; continue with: "
        f"{' '.join(resume)}\n"
    )
    monkeypatch.undo()
    assert main(resume[3:]) == 0
    assert_same_results(results_of(run), full)


def test_a_state_is_resumed_only_by_the_same_config_and_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resume must not mix two configs' epochs; a new run must not overwrite an interrupted one's work."""
    args = ["train", "--model", "shared-bottom", "--preset", "tiny", "--max-epochs", "3", "--batch-size",
            "64", "--max-steps-per-epoch", "2", "--no-progress", "--output", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(models.train, "after_epoch", EpochCounter(2, RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        main(args)
    monkeypatch.undo()
    saved = (tmp_path / STATE_DIR / "seed0.pt").read_bytes()

    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / STATE_DIR} holds the state of an interrupted run: add --resume to continue it, "
        "or delete that folder to start over\n"
    )
    assert main([*args, "--resume", "--lr", "0.01", "--max-epochs", "5"]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume: {tmp_path / STATE_DIR / 'seed0.pt'} was written by a run with another config "
        "(lr: 0.001 in the state, 0.01 now; max_epochs: 3 in the state, 5 now): resume with that config, or "
        f"delete {tmp_path / STATE_DIR} to start over\n"
    )
    assert (tmp_path / STATE_DIR / "seed0.pt").read_bytes() == saved  # refused before touching it
    assert main([*args[:-2], "--resume"]) == 2  # no --output: nothing to resume from
    assert "error: --resume needs --output" in capsys.readouterr().err
    state = torch.load(tmp_path / STATE_DIR / "seed0.pt", weights_only=False)
    state["model"]["state_dict"].pop(next(iter(state["model"]["state_dict"])))  # as after a code change
    torch.save(state, tmp_path / STATE_DIR / "seed0.pt")
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: --resume: the training state of seed 0 does not fit the model this code builds"
    )
    assert err.endswith(f"delete the {STATE_DIR} folder to start over\n") and "Traceback" not in err
    (tmp_path / STATE_DIR / "seed0.pt").write_bytes(saved)
    args.remove("--no-progress")  # display only: may differ
    assert main([*args, "--resume"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["seeds"][0]["epochs_run"] == 3


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_result_of_a_run_never_stopped(tmp_path: Path) -> None:
    """The real thing: SIGKILL at whatever point the child has reached once a state exists (the state is
    written to a temporary file and renamed, so no kill point leaves half of one)."""
    args = ["train", "--model", "csrec", "--preset", "tiny", "--max-epochs", "12", "--lr", "0.05",
            "--batch-size", "64", "--max-steps-per-epoch", "3", "--seeds", "0", "1",
            "--no-progress"]  # fmt: skip
    killed = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-m", "models", *args, "--output", str(killed)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while not (killed / STATE_DIR / "seed0.pt").exists():
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()  # killed before the end: the resume below has work to do

    assert main([*args, "--output", str(tmp_path / "full")]) == 0
    assert main([*args, "--output", str(killed), "--resume"]) == 0
    assert_same_results(results_of(killed), results_of(tmp_path / "full"))


def test_a_resume_without_a_state_trains_from_the_first_epoch(tmp_path: Path) -> None:
    """A job retried with --resume that was killed before its first epoch ended has nothing to continue."""
    config = config_of("shared-bottom", max_epochs=1, seeds=[0])
    report = run_training(config, tmp_path, resume=True)
    assert report["seeds"][0]["epochs_run"] == 1 and (tmp_path / "seed0" / "checkpoint.pt").exists()
    with pytest.raises(ModelsError, match="--resume needs --output"):
        run_training(config, None, resume=True)
