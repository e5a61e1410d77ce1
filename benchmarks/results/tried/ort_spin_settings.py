"""ONNX Runtime's spin settings against the ranker's two CPU sessions (serving_peers.md, "What was tried").

The ranker keeps two sessions per graph on CPU (`--spinning alone`): lone runs on one whose two intra-op threads
spin during a run, concurrent runs on one with one sleeping thread per executor thread. ORT 1.31 has two more
knobs, `session.intra_op.spin_duration_us` (how long an idle pool thread spins before it sleeps) and
`session.intra_op.spin_backoff_max` (how rarely it polls while spinning); a session with a bounded spin might serve
both kinds of run and drop the second session. This measures, in-process with bench_ranker's MMoE (500 rows):

* lone runs: p50 of sequential runs, 0.5 ms apart, eight per setting in rotating blocks (the block's first run
  counted separately);
* concurrent runs: two threads calling `run` on 2,000-row batches (four requests, as at concurrency 16) beside a
  thread doing small numpy steps as the event loop would, 3 s per setting, three rotations (requests/s, loop
  iterations/s), with one and with two calling threads;
* what the first run on the spinning session costs after the other session ran, after an idle gap, and after
  another run on the same session;
* spinning between runs (`session.force_spinning_stop` 0) while the caller works for 1.5 or 4 ms between runs.

    .venv/bin/python benchmarks/results/tried/ort_spin_settings.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks import bench_ranker as br  # noqa: E402

DURATION = "session.intra_op.spin_duration_us"
BACKOFF = "session.intra_op.spin_backoff_max"
SETTINGS: dict[str, tuple[int, str, tuple[tuple[str, str], ...]]] = {  # name -> threads, spinning, more entries
    "2 threads, sleeping": (2, "off", ()),
    "2 threads, spinning (the lone-run session)": (2, "during runs", ()),
    "2 threads, spinning, spin_duration_us 20": (2, "during runs", ((DURATION, "20"),)),
    "2 threads, spinning, spin_duration_us 100": (2, "during runs", ((DURATION, "100"),)),
    "2 threads, spinning, spin_duration_us 500": (2, "during runs", ((DURATION, "500"),)),
    "2 threads, spinning, spin_backoff_max 8": (2, "during runs", ((BACKOFF, "8"),)),
    "2 threads, spinning, spin_backoff_max 64": (2, "during runs", ((BACKOFF, "64"),)),
    "1 thread, sleeping (the concurrent-run session)": (1, "off", ()),
}


def rotating(names: list[str], rounds: int):
    for r in range(rounds):
        shift = r % len(names)
        yield from names[shift:] + names[:shift]


def lone(sessions: dict[str, ort.InferenceSession], feeds: dict[str, np.ndarray]) -> None:
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for name in rotating(list(sessions), 40):
        for _ in range(8):
            start = time.perf_counter()
            sessions[name].run(["logits"], feeds)
            times[name].append(time.perf_counter() - start)
            time.sleep(0.0005)
    print("\nlone runs, ms: p50 / p90 (each block's first run excluded) / the first runs' p50")
    for name, t in times.items():
        rest = [x for i, x in enumerate(t) if i % 8]
        print(f"  {name:48s} {ms(rest, 50)} / {ms(rest, 90)} / {ms(t[::8], 50)}")


def rates(s: ort.InferenceSession, batch: dict[str, np.ndarray], callers: int) -> tuple[float, float]:
    """Requests/s of ``callers`` threads running ``batch`` (four requests) and a busy loop thread's iterations/s."""
    stop, runs, loop = threading.Event(), [0], [0]

    def call() -> None:
        while not stop.is_set():
            s.run(["logits"], batch)
            runs[0] += 1

    def event_loop() -> None:
        a = np.random.default_rng(0).random(200)
        while not stop.is_set():
            for _ in range(50):
                a = np.sort(a) + 1.0
            loop[0] += 1
            time.sleep(0)

    threads = [threading.Thread(target=call) for _ in range(callers)] + [threading.Thread(target=event_loop)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return runs[0] * 4 / elapsed, loop[0] / elapsed


def concurrent(sessions: dict[str, ort.InferenceSession], feeds: dict[str, np.ndarray], callers: int) -> None:
    batch = {k: np.tile(v, (4, 1)) for k, v in feeds.items()}
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in sessions}
    for name in rotating(list(sessions), 3):
        measured[name].append(rates(sessions[name], batch, callers))
    print(f"\n{callers} calling thread(s), 2,000-row batches beside a busy loop thread: requests/s, loop iterations/s")
    for name, r in measured.items():
        print(f"  {name:48s} {statistics.mean(x[0] for x in r):6.0f}  {statistics.mean(x[1] for x in r):6.0f}")


def switching(spinning: ort.InferenceSession, sleeping: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> None:
    before: dict[str, Callable[[], object]] = {
        "after a run on the same session": lambda: spinning.run(["logits"], feeds),
        "after a run on the other session": lambda: sleeping.run(["logits"], feeds),
        "after four runs on the other session": lambda: [sleeping.run(["logits"], feeds) for _ in range(4)],
        "after 3 ms idle": lambda: time.sleep(0.003),
    }
    times: dict[str, list[float]] = {name: [] for name in before}
    for name in rotating(list(before), 150 * len(before)):
        before[name]()
        time.sleep(0.0005)
        start = time.perf_counter()
        spinning.run(["logits"], feeds)
        times[name].append(time.perf_counter() - start)
        time.sleep(0.0005)
    print("\na run on the spinning session, ms: p50 / p90")
    for name, t in times.items():
        print(f"  {name:48s} {ms(t, 50)} / {ms(t, 90)}")


def between(model: Path, feeds: dict[str, np.ndarray]) -> None:
    sessions = {
        "stop spinning when a run returns (the ranker's)": br.ort_session(model, 2, "during runs"),
        "spin on after a run (force_spinning_stop 0)": br.ort_session(model, 2, "always"),
    }
    for s in sessions.values():
        for _ in range(10):
            s.run(["logits"], feeds)
    a = np.random.default_rng(0).random(3000)
    for gap_ms in (1.5, 4.0):
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for name in rotating(list(sessions), 80):
            for _ in range(8):
                end = time.perf_counter() + gap_ms / 1e3
                while time.perf_counter() < end:  # the caller's own work between requests
                    np.sort(a)
                start = time.perf_counter()
                sessions[name].run(["logits"], feeds)
                times[name].append(time.perf_counter() - start)
        print(f"\nruns {gap_ms} ms of numpy work apart, ms: p50 / p90")
        for name, t in times.items():
            print(f"  {name:48s} {ms(t, 50)} / {ms(t, 90)}")


def ms(times: Sequence[float], q: float) -> str:
    return f"{np.percentile(times, q) * 1e3:.3f}"


def main() -> None:
    package = br.write_package(br.build_model(), Path(tempfile.mkdtemp()))
    _, sparse, dense = br.request_rows(package, 500, np.random.default_rng(0))
    feeds = {"sparse": sparse, "dense": dense}
    model = package / "model.onnx"
    sessions = {name: br.ort_session(model, *setting) for name, setting in SETTINGS.items()}
    for s in sessions.values():
        for _ in range(10):
            s.run(["logits"], feeds)
    print(br.uptime())
    lone(sessions, feeds)
    concurrent(sessions, feeds, 2)
    concurrent(sessions, feeds, 1)
    switching(
        sessions["2 threads, spinning (the lone-run session)"],
        sessions["1 thread, sleeping (the concurrent-run session)"],
        feeds,
    )
    between(model, feeds)
    print(br.uptime())


if __name__ == "__main__":
    main()
