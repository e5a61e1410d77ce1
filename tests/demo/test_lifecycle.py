"""``python -m deploy.demo`` as a first-time user runs it: twice at once, stopped with Ctrl-C or SIGTERM,
killed, with a server or the broker dying under it. Real processes, the smallest settings; ``ps`` after."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.demo.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_state_restored")]
ROOT = Path(__file__).resolve().parents[2]
# Seconds of training; with LONG_SIMULATION a simulation of over a minute (300 users x 50 feeds) to act in.
TINY = "--users 300 --impressions 2000 --ranking-epochs 1 --retrieval-steps 5 --serve no".split()
LONG_SIMULATION = ["--requests-per-user", "50"]
HANG = 120  # seconds after which a demo that should have stopped counts as hung


def _default_sigint() -> None:
    """Ctrl-C as at a terminal: a suite run in the background (``make test &``, some CI runners) inherits SIGINT
    ignored, and the demo then rightly ignores it too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Demo:
    """``python -m deploy.demo`` in a child process, output in a file; killed if a test leaves it running."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.log = workdir.parent / f"{workdir.name}.out"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "deploy.demo", *TINY, *extra, "--workdir", str(workdir)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_default_sigint,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str) -> None:
        """Until the demo prints ``text`` (a step's header); fails if it exits first."""
        deadline = time.monotonic() + HANG
        while text not in self.output():
            assert self.process.poll() is None, f"the demo exited before {text!r}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {HANG} s:\n{self.output()[-3000:]}"
            time.sleep(0.2)

    def children(self) -> dict[int, str]:
        """pid -> command line of the demo's direct children (broker, servers), from /proc."""
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid:
                    pid = int(stat.parent.name)
                    found[pid] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError, ValueError):
                continue
        return found

    def wait(self) -> int:
        return self.process.wait(timeout=HANG)

    def __enter__(self) -> "Demo":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper has stopped running)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def still_running(pids: list[int], within: float = 0.0) -> list[int]:
    """``pids`` still running after waiting up to ``within`` seconds for them to go."""
    deadline = time.monotonic() + within
    while (running := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return running


def test_a_second_run_on_a_busy_workdir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second demo on the same workdir emptied it under the first one (whose report then failed with
    FileExistsError); now it refuses in one line naming the folder and the run that holds it."""
    work = tmp_path / "work"
    with Demo(work) as first:
        first.wait_for("[1/6]")
        assert main([*TINY, "--workdir", str(work)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"error: --workdir {work} is in use by another demo run (pid {first.process.pid})"
        )
        assert "Traceback" not in err and "--workdir" in err.splitlines()[-1]
        assert (work / "repository").is_dir()  # the first run's files are untouched


@pytest.mark.parametrize(
    ("sig", "step", "code"),
    [(signal.SIGINT, "[1/6]", 130), (signal.SIGTERM, "[3/6]", 143)],
    ids=["ctrl-c-while-training", "sigterm-while-serving-traffic"],
)
def test_a_stopped_demo_stops_every_child_and_exits_with_the_signal_code(
    tmp_path: Path, sig: signal.Signals, step: str, code: int
) -> None:
    """SIGTERM exited with 130 (Ctrl-C's code): kill, systemd and CI expect 128 + 15."""
    with Demo(tmp_path / "work", *LONG_SIMULATION) as demo:
        demo.wait_for(step)
        children = list(demo.children())
        demo.process.send_signal(sig)
        assert demo.wait() == code, demo.output()[-3000:]
        assert "interrupted; every process the demo started has been stopped" in demo.output()
        assert still_running(children) == []


# ``python -m deploy.demo`` whose training is a Ctrl-C that lands in code exec() runs from a string, as it
# does when torch builds dataclasses in its lazy imports (SIGINTs 0 to 3 s into training: 3 runs in 34 exited
# -2, each hit 1 to 2 s in).
CTRL_C_IN_EXEC = """
import os, signal, sys
from deploy.demo import cli as demo

def train_retrieval(*args, **kwargs):
    exec("os.kill(os.getpid(), signal.SIGINT)\\nwhile True: pass")

demo.train_retrieval = train_retrieval
sys.exit(demo.main(sys.argv[1:]))
"""


def test_ctrl_c_inside_code_run_by_exec_still_exits_with_130(tmp_path: Path) -> None:
    """A Ctrl-C caught by ``main``, which printed its message, still ended the run by SIGINT (-2, no 130):
    CPython marks a plain KeyboardInterrupt that leaves an exec() of a string as unhandled."""
    (tmp_path / "ctrl_c_in_exec.py").write_text(CTRL_C_IN_EXEC)
    done = subprocess.run(
        [sys.executable, "-m", "ctrl_c_in_exec", *TINY, "--workdir", str(tmp_path / "work")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_default_sigint,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=HANG,
    )  # fmt: skip
    assert done.returncode == 130, done.stdout[-3000:]
    assert "interrupted; every process the demo started has been stopped" in done.stdout
    assert "Traceback" not in done.stdout


def test_a_killed_demo_takes_its_servers_with_it(tmp_path: Path) -> None:
    """SIGKILL skips every cleanup; the servers outlived the demo (only the broker died with it)."""
    with Demo(tmp_path / "work", *LONG_SIMULATION) as demo:
        demo.wait_for("[3/6]")
        children = demo.children()
        assert {"retrieval_server", "ranker_server", "analytics.consumer"} <= {
            word for command in children.values() for word in command.split()
        }
        demo.process.kill()
        demo.wait()
        left = still_running(list(children), within=HANG)
        assert left == [], {pid: children[pid] for pid in left}


def test_a_server_that_dies_stops_the_demo_with_its_last_lines(tmp_path: Path) -> None:
    """A crashed ranker left the demo simulating users against nothing, then waiting on the consumer's idle
    timeout, and it exited 0 with a report of failed requests; now it stops with the ranker's own lines."""
    with Demo(tmp_path / "work", *LONG_SIMULATION) as demo:
        demo.wait_for("[3/6]")
        children = demo.children()
        [ranker] = [pid for pid, command in children.items() if "ranker_server" in command.split()]
        os.kill(ranker, signal.SIGKILL)
        assert demo.wait() == 1
        out = demo.output()
        assert (
            "error: ranker_server was killed by SIGKILL while the demo needed it; its last lines:" in out
        ), out[-3000:]
        assert "ranker_server" in out.split("its last lines:", 1)[1] and "Traceback" not in out
        assert "[4/6]" not in out
        assert still_running(list(children)) == []


def test_a_broker_that_cannot_start_is_a_one_line_error_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker binary that exits at once surfaced as a BrokerStartError traceback."""
    broken = tmp_path / "tansu"
    broken.write_text("#!/bin/sh\necho 'tansu: cannot open the listener (simulated)' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(broken))
    assert main([*TINY, "--requests-per-user", "1", "--workdir", str(tmp_path / "work")]) == 1
    err = capsys.readouterr().err
    assert "error: embedded broker exited early with code 3" in err and "Traceback" not in err
    assert err.rstrip().endswith("tansu: cannot open the listener (simulated)")
