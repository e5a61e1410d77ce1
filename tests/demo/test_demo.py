"""The README's main command, shrunk: real training, real servers, real Kafka, real analytics."""

import json
from pathlib import Path

import pytest

from deploy.demo.__main__ import build_parser, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_end_to_end_loses_no_event(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "--workdir", str(tmp_path / "demo"),
            "--users", "300",
            "--requests-per-user", "2",
            "--impressions", "6000",
            "--ranking-epochs", "2",
            "--retrieval-steps", "20",
            "--concurrency", "4",
        ]
    )
    result = run(args)

    simulation = result["simulation"]
    assert simulation["requests"] == 600
    assert simulation["failed_requests"] == 0
    # Every outcome the simulated backend sent reached the store exactly once.
    assert result["persisted"]["outcomes"] == result["expected_outcomes"] > 0
    for key in ("retrieval-ssmtl", "ranking-mmoe-dml"):
        report = json.loads(Path(result["reports"][key]).read_text())
        assert report["experiment_key"] == key
        assert sum(v["users"] for v in report["variants"]) == 300
        assert {m["name"] for m in report["metrics"]} >= {"top_click", "ctr"}
