"""Stopping the demo with a signal when the signal's exception cannot reach ``main``: lost in a finalizer,
or raised while the demo's libraries load."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.demo import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    ("sig", "stop"), [(signal.SIGINT, cli.Interrupted), (signal.SIGTERM, cli.Terminated)]
)
def test_a_stop_lost_in_a_finalizer_is_raised_at_the_next_step(
    monkeypatch: pytest.MonkeyPatch, sig: signal.Signals, stop: type[cli.Interrupted]
) -> None:
    """Once in the lifecycle test, under load, a Ctrl-C right after "[1/6]" was lost and training went on."""
    monkeypatch.setattr(cli, "_STOPS", [])

    class Collected:
        def __del__(self) -> None:  # the handler runs between the main thread's bytecodes, these too
            cli._raise_interrupted(sig, None)

    Collected()  # its __del__ runs now; Python prints "Exception ignored" and drops the exception
    with pytest.raises(stop):
        cli._step(2, "starting the servers")


def test_ctrl_c_while_the_demo_loads_its_libraries_is_one_line(tmp_path: Path) -> None:
    """torch, grpc and duckdb take seconds to import; a Ctrl-C then printed a traceback from inside them."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise KeyboardInterrupt  # Ctrl-C while torch loads\n")
    done = subprocess.run(
        [sys.executable, "-m", "deploy.demo", "--serve", "no"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "interrupted while the demo loaded its libraries; nothing was started"
    assert done.stdout == ""
