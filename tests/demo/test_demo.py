"""The README's main command, shrunk: real training, real servers, real Kafka, real analytics."""

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_end_to_end_loses_no_event(demo_run: dict[str, Any]) -> None:
    simulation = demo_run["simulation"]
    assert simulation["requests"] == 600
    assert simulation["failed_requests"] == 0
    # Every outcome the simulated backend sent reached the store exactly once.
    assert demo_run["persisted"]["outcomes"] == demo_run["expected_outcomes"] > 0
    for key in ("retrieval-ssmtl", "ranking-mmoe-dml"):
        report = json.loads(Path(demo_run["reports"][key]).read_text())
        assert report["experiment_key"] == key
        assert sum(v["users"] for v in report["variants"]) == 300
        assert {m["name"] for m in report["metrics"]} >= {"top_click", "ctr"}
