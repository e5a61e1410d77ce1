"""bench_workers' one-core pod: the server and every thread it starts run on the CPUs it was given."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_ranker as br  # noqa: E402
from bench_workers import cpu_list  # noqa: E402


def test_cpu_lists_parse_and_name_a_bad_one() -> None:
    assert cpu_list("0") == {0}
    assert cpu_list("0,1") == {0, 1}
    with pytest.raises(argparse.ArgumentTypeError, match="'0-1'"):
        cpu_list("0-1")


@pytest.mark.integration
def test_a_pinned_server_runs_every_thread_on_its_cpus(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("pinning is invisible on one CPU")
    cpu = min(os.sched_getaffinity(0))
    br.write_package(br.build_model(), tmp_path)
    proc, _ = br.start_server(tmp_path, 0, br.free_port(), [], cpus={cpu})
    try:
        threads = os.listdir(f"/proc/{proc.pid}/task")
        assert len(threads) > 3  # gRPC's and ONNX Runtime's threads are running
        for tid in threads:
            assert os.sched_getaffinity(int(tid)) == {cpu}
    finally:
        proc.kill()
        proc.wait()
