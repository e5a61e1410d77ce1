"""bench_rank_threads: its per-thread CPU and page-fault readers (on this process) and its settings."""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_rank_threads import main, minor_faults, thread_cpu_ns, thread_role  # noqa: E402


def test_a_busy_thread_shows_its_cpu_under_its_own_id() -> None:
    pid = os.getpid()
    ids: list[int] = []
    own_ns: list[int] = []
    stop = threading.Event()

    def spin() -> None:
        ids.append(threading.get_native_id())
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
        own_ns.append(time.thread_time_ns())  # the thread's own clock, from the C library
        stop.wait(5)

    worker = threading.Thread(target=spin)
    worker.start()
    while not own_ns:
        time.sleep(0.01)
    cpu = thread_cpu_ns(pid)  # the spin is over; the thread is still alive
    stop.set()
    worker.join()
    assert own_ns[0] > 0.02e9  # it did get a core for a while, even on a busy machine
    assert abs(cpu[ids[0]] - own_ns[0]) < 0.02e9, (cpu, own_ns)
    assert pid in cpu and thread_role(pid, pid) == "main"
    assert thread_role(pid, ids[0]) == "onnxruntime"  # any thread that is neither the loop nor gRPC's


def test_touching_fresh_pages_counts_one_minor_fault_each() -> None:
    pages = 2048
    with mmap.mmap(-1, pages * mmap.PAGESIZE) as fresh:  # anonymous memory: no page is mapped until touched
        before = minor_faults(os.getpid())
        for page in range(pages):
            fresh[page * mmap.PAGESIZE] = 1
        touched = minor_faults(os.getpid()) - before
    assert pages <= touched < pages + 200, touched  # the loop itself may fault a few more


@pytest.mark.parametrize("argv", [["--per-round", "1"], ["--rounds", "0"]])
def test_settings_that_leave_no_timed_call_are_refused_before_any_server_starts(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # each round's first call is reported apart: one call per round leaves the c=1 p50 without a sample
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "--per-round at least 2" in capsys.readouterr().err
