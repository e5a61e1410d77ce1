"""GrowthBook's cross-SDK suite: every required case must pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from experiment_router.conformance import (
    EXCLUSION_REASONS,
    REQUIRED_SECTIONS,
    check_case,
    is_excluded,
    run_suite,
)

CASES_PATH = Path(__file__).parent / "data" / "growthbook_cases.json"

SPEC_VERSION = "0.8.0"  # pinned: a new cases.json must be reviewed, not silently picked up
EXPECTED_COUNTS = {
    "hash": 15,
    "getBucketRange": 13,
    "chooseVariation": 13,
    "inNamespace": 16,
    "getEqualWeights": 6,
    "evalCondition": 248,
    "run": 73,
    "stickyBucket": 13,
    "feature": 55,
}
EXCLUDED = {"run": 2, "feature": 4}


def test_spec_version_is_pinned(gb_cases: dict) -> None:
    assert gb_cases["specVersion"] == SPEC_VERSION
    assert {s: len(gb_cases[s]) for s in REQUIRED_SECTIONS} == EXPECTED_COUNTS


def test_exclusion_rules_drop_exactly_the_query_string_and_contextual_bandit_cases(gb_cases: dict) -> None:
    excluded = {s: [c[0] for c in gb_cases[s] if is_excluded(s, c)] for s in REQUIRED_SECTIONS}
    assert {s: names for s, names in excluded.items() if names} == {
        "run": ["querystring force", "querystring force with inactive"],
        "feature": [c[0] for c in gb_cases["feature"] if c[0].startswith("CB rule")],
    }
    assert len(excluded["feature"]) == EXCLUDED["feature"]
    assert set(EXCLUSION_REASONS) >= {s for s, names in excluded.items() if names}


def test_case(gb_case: tuple[str, list]) -> None:
    section, case = gb_case
    assert check_case(section, case), f"{section} case {case[0]!r} failed"


def test_run_suite_counts(gb_cases: dict) -> None:
    reports = {r.section: r for r in run_suite(gb_cases)}
    assert all(r.failed == 0 for r in reports.values())
    assert {s: r.excluded for s, r in reports.items() if r.excluded} == EXCLUDED
    assert reports["run"].passed == 71 and reports["feature"].passed == 51


def test_cli_prints_one_line_per_section_and_exits_zero() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "experiment_router", "conformance", str(CASES_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(":")[0]: line for line in proc.stdout.splitlines() if ":" in line}
    for section in REQUIRED_SECTIONS:
        assert (
            f"{section}: {EXPECTED_COUNTS[section] - EXCLUDED.get(section, 0)} passed, 0 failed"
            in lines[section]
        )
    assert "(4 excluded: contextual bandit rules, not implemented)" in lines["feature"]
    assert "(2 excluded: depend on URLs/query strings)" in lines["run"]


def test_cli_exits_nonzero_when_a_required_case_fails(tmp_path, gb_cases: dict) -> None:
    broken = dict(gb_cases)
    broken["hash"] = [["", "a", 1, 0.5]] + gb_cases["hash"][1:]
    path = tmp_path / "cases.json"
    import json

    path.write_text(json.dumps(broken))
    proc = subprocess.run(
        [sys.executable, "-m", "experiment_router", "conformance", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "hash: 14 passed, 1 failed" in proc.stdout



def test_malformed_cases_fail_by_name_without_stopping_the_suite(gb_cases: dict) -> None:
    """A case that is not a tuple of its section's layout raised out of the exclusion rule or the report."""
    cases = {
        "hash": [[], "not a case", gb_cases["hash"][0], 7],
        "run": [["too short"], gb_cases["run"][0]],
    }
    reports = {r.section: r for r in run_suite(cases)}
    assert (reports["hash"].passed, reports["hash"].failed) == (1, 3)
    assert reports["hash"].failed_names == ("case #0 ([])", 'case #1 ("not a case")', "case #3 (7)")
    assert (reports["run"].passed, reports["run"].failed, reports["run"].failed_names) == (1, 1, ("too short",))
