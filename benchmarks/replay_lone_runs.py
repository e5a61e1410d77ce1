"""Replays logged lone-run times through the ranker's LoneRunChooser: how often does it pick the faster session?

A lone run (nothing else in ONNX Runtime) goes to the spinning or the sleeping session (ranker_server.inference).
Which one is faster depends on the load, and single run times are noisy: in the benchmark's mixed traffic a
spinning run is usually faster but lands in a slow tail 3 times in 10. This script draws run times from a log of
real lone runs (benchmarks/results/lone_runs_20261206.txt, written by a server patched with
benchmarks/results/tried/lone_run_log.patch) for the session each pick names, feeds back only what the server
records (warm runs: the second in a row on a session), and reports, over many simulated server lifetimes, the
share of lone runs on the faster session and the median lone-run time. Optionally the load changes mid-way: the
spinning session's times scaled by ``--busy-factor`` (cores kept busy by other processes), then back.

What it leaves out: draws are independent and every recorded run is as warm as in the log (sessions there ran in
turns). In the server, the check of a session that waited many runs finds it colder (logged: a spinning check at
6.4 ms where its runs in turns took 2.3), which biases checks against the slower session; a chooser whose
slower session moved 4x faster looked better here and stayed on the sleeping session for the last 140 lone runs
of one benchmark run, so it was not kept.

Run:  .venv/bin/python benchmarks/replay_lone_runs.py [--log FILE] [--runs 1400] [--lifetimes 300]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ranker_server.inference import LoneRunChooser  # noqa: E402

ROWS = 500  # one size class: the benchmark's 500-candidate requests


def load_times(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Warm lone runs that stayed alone (what the server records): spinning seconds, sleeping seconds."""
    data = np.loadtxt(path, comments="#", ndmin=2)
    _, spin, seconds, warm, alone = data.T
    kept = (warm == 1) & (alone == 1)
    return seconds[kept & (spin == 1)], seconds[kept & (spin == 0)]


def lifetime(
    chooser: LoneRunChooser,
    phases: list[tuple[int, float]],
    spinning: np.ndarray,
    sleeping: np.ndarray,
    rng: np.random.Generator,
) -> list[tuple[float, float]]:
    """Per phase (runs, factor on spinning times): share of picks on the faster session, median run time."""
    last: bool | None = None
    out = []
    for runs, factor in phases:
        faster_is_spin = np.median(spinning) * factor < np.median(sleeping)
        picks, times = [], []
        for _ in range(runs):
            spin = chooser.spin(ROWS)
            seconds = float(rng.choice(spinning)) * factor if spin else float(rng.choice(sleeping))
            if spin == last:  # the first run after a switch is cold and not recorded, as in OnnxRanker.infer
                chooser.record(ROWS, spin, seconds)
            last = spin
            picks.append(spin == faster_is_spin)
            times.append(seconds)
        out.append((float(np.mean(picks)), float(np.median(times))))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks/results/lone_runs_20261206.txt")
    parser.add_argument("--runs", type=int, default=1400, help="lone runs per phase")
    parser.add_argument("--lifetimes", type=int, default=300, help="simulated server starts per set-up")
    parser.add_argument("--busy-factor", type=float, default=2.5,
                        help="spinning times x this in the middle phase (0: one idle phase only)")  # fmt: skip
    args = parser.parse_args(argv)
    spinning, sleeping = load_times(args.log)
    print(f"{args.log.name}: {len(spinning)} spinning runs (p50 {np.median(spinning) * 1e3:.2f} ms, "
          f"p90 {np.percentile(spinning, 90) * 1e3:.2f}), {len(sleeping)} sleeping (p50 "
          f"{np.median(sleeping) * 1e3:.2f} ms, p90 {np.percentile(sleeping, 90) * 1e3:.2f})")  # fmt: skip
    phases = [(args.runs, 1.0)]
    if args.busy_factor:
        phases += [(args.runs, args.busy_factor), (args.runs, 1.0)]
    names = ["idle", f"busy (spinning x{args.busy_factor})", "idle again"][: len(phases)]
    setups = {
        "estimates started at the first run (warmup=1: a03e73d and before)": lambda: LoneRunChooser(warmup=1, checks=0),
        "started at the median of the first 8 runs of each session (014a218 and before)": lambda: LoneRunChooser(
            checks=0
        ),
        "+ the session not in use at the median of its last 3 samples, the least for spinning (default)": (
            LoneRunChooser
        ),
    }
    print(f"{args.lifetimes} lifetimes of {len(phases)} x {args.runs} lone runs; per phase: share of lone runs on "
          "the faster session (mean, worst 5% of lifetimes), median lone-run ms (mean)")  # fmt: skip
    print("| chooser | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(phases))
    for name, make in setups.items():
        results = np.array([
            lifetime(make(), phases, spinning, sleeping, np.random.default_rng(seed)) for seed in range(args.lifetimes)
        ])  # fmt: skip
        cells = [
            f"{results[:, i, 0].mean():.2f} ({np.quantile(results[:, i, 0], 0.05):.2f}), "
            f"{results[:, i, 1].mean() * 1e3:.2f} ms"
            for i in range(len(phases))
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
