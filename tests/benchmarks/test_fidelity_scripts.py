"""run_fidelity.sh and run_fidelity_dml_ssmtl.sh: --help prints their header and starts nothing; a bad
argument is refused before any job starts. (WORK, CENSUS and DATA point into the test's folder, so that a
script that did start its jobs would fail them at once and write nothing outside it.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"WORK": str(tmp_path / "work"), "CENSUS": str(tmp_path / "none"),
                        "DATA": str(tmp_path / "none"), "JOBS": "1"}  # fmt: skip
    return subprocess.run(
        ["bash", str(BENCHMARKS / script), *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    ("script", "first_line"),
    [
        ("run_fidelity.sh", "Issue 16 (model fidelity), CSRec and GRec"),
        ("run_fidelity_dml_ssmtl.sh", "Issue #16 (model fidelity), DML and SSMTL"),
    ],
)
def test_help_prints_the_header_and_starts_nothing(script: str, first_line: str, tmp_path: Path) -> None:
    result = run(script, ["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(first_line)
    assert "set -euo" not in result.stdout and result.stderr == ""
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("script", "args", "error"),
    [
        ("run_fidelity.sh", ["gpu"], "usage: benchmarks/run_fidelity.sh [cpu|cuda] [jobs]"),
        ("run_fidelity_dml_ssmtl.sh", ["--out"], "unknown option --out"),
    ],
)
def test_a_bad_argument_is_refused_before_any_job(
    script: str, args: list[str], error: str, tmp_path: Path
) -> None:
    result = run(script, args, tmp_path)
    assert result.returncode == 2
    assert error in result.stderr and "start:" not in result.stdout
    assert not (tmp_path / "work").exists()
