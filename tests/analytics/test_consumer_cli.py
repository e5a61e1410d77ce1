"""``python -m analytics.consumer`` given a bootstrap address that cannot work: one line, in bounded time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analytics.consumer.__main__ import main
from analytics.kafka.broker import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "bootstrap", ["kafka-1:9o92", "127.0.0.1:99999", "", "kafka-1:9092,", "kafka-1:"]
)
def test_a_malformed_bootstrap_address_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bootstrap: str
) -> None:
    """A port that is not a number raised ValueError from kafka-python (a traceback); an empty host or a port
    out of range waited for the whole connect timeout, then blamed the network."""
    store = tmp_path / "store"
    assert main(["--bootstrap", bootstrap, "--store", str(store), "--connect-timeout-s", "2"]) == 2
    err = capsys.readouterr().err
    assert f"error: --bootstrap {bootstrap!r}: " in err and "is not host:port" in err, err
    assert not store.exists()


def test_an_unreachable_bootstrap_server_is_one_line_naming_the_cause(tmp_path: Path) -> None:
    """kafka-python logged every retry of its bootstrap wait (about 25 lines in 30 s) before the one-line
    error, which said only 'Unable to bootstrap'."""
    port = free_port()
    run = subprocess.run(
        [sys.executable, "-m", "analytics.consumer", "--bootstrap", f"127.0.0.1:{port}", "--store",
         str(tmp_path / "store"), "--connect-timeout-s", "2"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = run.stderr.splitlines()
    assert run.returncode == 2 and [line for line in lines if " kafka." in line] == [], run.stderr
    (error,) = [line for line in lines if line.startswith("error:")]
    assert error.startswith(f"error: cannot reach Kafka at --bootstrap 127.0.0.1:{port} within 2 s: ")
    assert "ECONNREFUSED" in error
