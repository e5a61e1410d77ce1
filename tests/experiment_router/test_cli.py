"""The command line on the example configs, and its error handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiment_router.cli import main
from tests.experiment_router.helpers import EXAMPLES

TWO_LAYERS = str(EXAMPLES / "two_layers.yaml")


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", TWO_LAYERS]) == 0
    assert "OK (2 experiments, 2 running)" in capsys.readouterr().out


def test_validate_bad_config_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TWO_LAYERS).read_text().replace("coverage: 1.0", "coverage: 3", 1))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:") and "retrieval-ssmtl" in err and "coverage" in err
    assert "Traceback" not in err


def test_validate_against_model_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", TWO_LAYERS, "--model-repository", str(tmp_path)]) == 2
    assert "is not in the model repository" in capsys.readouterr().err


def test_assign_explains_each_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["assign", "--config", TWO_LAYERS, "--user", "qa-alice", "--attr", "country=NL"]) == 0
    out = capsys.readouterr().out
    assert "forced into 'treatment' (QA allowlist)" in out and "not targeted" in out
    assert "ranking: mmoe v1 task_weights={'click': 1.0, 'rating': 0.1}" in out


def test_assign_regular_user(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["assign", "--config", TWO_LAYERS, "--user", "user-42"]) == 0
    out = capsys.readouterr().out
    assert out.count("log exposure") == 2 and "in variant" in out


def test_preview_prints_counts_and_srm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--config", str(EXAMPLES / "aa_test.yaml"), "--users", "20000"]) == 0
    out = capsys.readouterr().out
    assert "ranking-aa [ranking, running]" in out and "SRM chi-square p-value" in out
    assert "expected 50.00%" in out


def test_bad_attr_syntax_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["assign", "--config", TWO_LAYERS, "--user", "u", "--attr", "novalue"])
    assert info.value.code == 2
