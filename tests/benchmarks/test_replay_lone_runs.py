"""The lone-run replay's bookkeeping: which logged runs it draws from and what it feeds back to a chooser."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.replay_lone_runs import lifetime, load_times


def test_only_warm_runs_that_stayed_alone_are_drawn(tmp_path: Path) -> None:
    log = tmp_path / "lone.txt"
    log.write_text(
        "# time, spinning, seconds, warm, stayed alone\n"
        "1.0 1 0.002 1 1\n"
        "2.0 1 0.009 0 1\n"  # cold: the first after a switch
        "3.0 0 0.003 1 1\n"
        "4.0 0 0.008 1 0\n"  # others joined during the run
    )
    spinning, sleeping = load_times(log)
    assert spinning.tolist() == [0.002] and sleeping.tolist() == [0.003]


class _Alternating:
    """Two runs on each session in turns; remembers what it was told."""

    def __init__(self) -> None:
        self.runs = 0
        self.recorded: list[bool] = []

    def spin(self, rows: int) -> bool:
        self.runs += 1
        return (self.runs - 1) // 2 % 2 == 0

    def record(self, rows: int, spin: bool, seconds: float) -> None:
        self.recorded.append(spin)


class _AlwaysSpinning(_Alternating):
    def spin(self, rows: int) -> bool:
        return True


def test_a_run_after_a_switch_is_not_recorded() -> None:
    chooser = _Alternating()
    rng = np.random.default_rng(0)
    [(share, median)] = lifetime(chooser, [(8, 1.0)], np.array([0.002]), np.array([0.003]), rng)  # type: ignore[arg-type]
    assert chooser.recorded == [True, False, True, False], "only the second run of each pair"
    assert share == 0.5 and median == 0.0025


def test_the_faster_session_follows_the_load_factor() -> None:
    rng = np.random.default_rng(0)
    spinning, sleeping = np.array([0.002]), np.array([0.003])
    phases = [(4, 1.0), (4, 2.0)]  # spinning x2: 4 ms, now slower than sleeping
    results = lifetime(_AlwaysSpinning(), phases, spinning, sleeping, rng)  # type: ignore[arg-type]
    assert results == [(1.0, 0.002), (0.0, 0.004)]
