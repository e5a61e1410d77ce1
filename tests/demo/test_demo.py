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
    # The drain ended because the consumer had stored every Kafka record, not after a fixed wait.
    assert demo_run["drain"]["caught_up"] and demo_run["drain"]["records_left"] == 0
    assert demo_run["drain"]["records"] > 0
    for key in ("retrieval-ssmtl", "ranking-mmoe-dml"):
        report = json.loads(Path(demo_run["reports"][key]).read_text())
        assert report["experiment_key"] == key
        assert sum(v["users"] for v in report["variants"]) == 300
        assert {m["name"] for m in report["metrics"]} >= {"top_click", "ctr"}


def test_interleaving_demo_reports_the_preference_next_to_the_ab_test(
    interleaving_demo_run: dict[str, Any],
) -> None:
    """``--interleaving``: half of the ranking layer sees MMoE and MMoE + DML merged, the other half their A/B
    test; every event arrives, and the report credits the interleaved users' clicks to the two rankers."""
    simulation = interleaving_demo_run["simulation"]
    assert simulation["requests"] == 600 and simulation["failed_requests"] == 0
    assert interleaving_demo_run["persisted"]["outcomes"] == interleaving_demo_run["expected_outcomes"] > 0
    assert interleaving_demo_run["drain"]["caught_up"] and interleaving_demo_run["drain"]["records_left"] == 0
    reports = {
        key: json.loads(Path(path).read_text()) for key, path in interleaving_demo_run["reports"].items()
    }
    assert set(reports) == {"retrieval-ssmtl", "ranking-interleave-dml", "ranking-mmoe-dml"}
    il, ab = reports["ranking-interleave-dml"], reports["ranking-mmoe-dml"]
    assert il["kind"] == "interleaving" and ab["kind"] == "ab"
    interleaved_users = il["interleaving"]["users"]
    # The ranking layer's two slices hold every user exactly once.
    assert (
        interleaved_users > 50
        and interleaved_users + ab["total_users"] == 300 == il["total_users"] + ab["total_users"]
    )
    requests = sum(
        n
        for key, n in simulation["requests_by_variant"].items()
        if "ranking-interleave-dml=interleaved" in key
    )
    assert requests == 2 * interleaved_users
    section = il["interleaving"]
    arms = [(a["key"], a["model_name"], a["model_version"]) for a in (section["arm_a"], section["arm_b"])]
    assert (
        arms == [("control", "mmoe", "1"), ("treatment", "mmoe+dml", "1")] and len(section["arm_sets"]) == 1
    )
    # Every interleaved feed's exposure, with its teams and arms, reached the interleaved table through Kafka.
    assert section["arm_sets"][0]["exposures"] == requests
    assert (
        0
        < section["users_with_clicks"]
        == section["wins_a"] + section["wins_b"] + section["ties"]
        <= interleaved_users
    )
    assert section["preference"]["p_value"] is not None and section["credit"]["p_value"] is not None
    assert section["timeline"] and section["timeline"][-1]["users"] == interleaved_users
