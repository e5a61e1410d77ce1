"""benchmarks/gpu_check.sh on a machine without a GPU: it skips cleanly, its CPU dry run runs the same checks
and measurements end to end, and its provider check refuses a CUDA session that silently fell back to CPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def cuda_device_present() -> bool:
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.startswith("GPU")


def test_help_is_the_header_comment_and_nothing_after_it() -> None:
    result = subprocess.run([str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("GPU check of the serving path")
    assert lines[-1].strip().startswith("--quick")
    assert not any(line.startswith(("set ", "cd ", "#")) for line in lines)


def test_without_a_gpu_it_says_so_and_exits_cleanly(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (fake / "nvidia-smi").chmod(0o755)
    out = tmp_path / "results.md"
    env = os.environ | {"PATH": f"{fake}:{os.environ['PATH']}"}
    result = subprocess.run(
        [str(SCRIPT), "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "SKIPPED, no CUDA device" in result.stdout and "--cpu-dry-run" in result.stdout
    assert not out.exists()


def test_cpu_dry_run_checks_and_measures_the_same_path(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    result = subprocess.run(
        [str(SCRIPT), "--cpu-dry-run", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    text = out.read_text()
    assert "nodes by provider in a profiled run: {'CPUExecutionProvider'" in text
    assert text.count("Parity with CPUExecutionProvider") == 2
    assert "Ranker: its model version obtained CPUExecutionProvider" in text
    raw = [line for line in text.splitlines() if line.startswith("| raw ORT, batch")]
    ranker = [line for line in text.splitlines() if line.startswith("| ranker Rank,")]
    assert len(raw) == 4 and len(ranker) == 4, text
    for line in raw + ranker:
        p50, p99, rps = (float(cell.replace(",", "")) for cell in line.split("|")[2:5])
        assert 0 < p50 <= p99 and rps > 0, line


@pytest.mark.skipif(cuda_device_present(), reason="a real GPU is here: gpu_check.sh runs the CUDA checks")
def test_a_cuda_session_that_fell_back_to_cpu_is_refused(tmp_path: Path) -> None:
    from benchmarks import bench_ranker, gpu_check

    package = bench_ranker.write_package(bench_ranker.build_model(), tmp_path)
    _, sparse, dense = bench_ranker.request_rows(package, 8, np.random.default_rng(0))
    with pytest.raises(gpu_check.CheckFailed, match="asked for CUDAExecutionProvider, ONNX Runtime gave"):
        gpu_check.provider_checks(package / "model.onnx", "cuda", {"sparse": sparse, "dense": dense})
