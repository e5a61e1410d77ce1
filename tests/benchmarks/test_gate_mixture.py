"""bench_gate_mixture: both exported graphs answer alike before anything is timed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_gate_mixture  # noqa: E402


def test_a_tiny_run_checks_the_graphs_agree_and_prints_the_ratio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "bench_gate_mixture.py",
        "--families",
        "mmoe",
        "--rounds",
        "2",
        "--calls",
        "1",
        "--candidates",
        "16",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    bench_gate_mixture.main()
    out = capsys.readouterr().out
    assert "mmoe: logits of the two graphs agree" in out
    assert "mmoe: einsum / matmul = " in out
