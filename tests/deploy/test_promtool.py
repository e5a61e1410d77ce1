"""Prometheus' own tool on our Prometheus files: compose's prometheus.yml, laid out as the container sees it,
loads; alerts.yml and the PrometheusRule's copy of it are valid rules; and the unit tests beside the rules,
deploy/observability/alerts_test.yml, pass under Prometheus' rule evaluator (``promtool test rules``), with a
case that fires and one that does not for every alert.

promtool: `make test` installs it (`make promtool`: the binary of Debian's prometheus package). Outside CI the
tests skip, saying so, where it is missing; in CI (CI=true) that is a failure, as for the browser tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
ALERTS = OBSERVABILITY / "alerts.yml"
ALERTS_TEST = OBSERVABILITY / "alerts_test.yml"
COMPOSE = ROOT / "deploy" / "compose.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "alerts" / "prometheus-rule.yaml"

RULE_NAMES = [
    rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing = (
            "promtool not found: run `make promtool` (it installs the one of Debian's prometheus package)"
        )
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return path


def run(promtool: str, *args: str | Path) -> tuple[int, str]:
    """promtool's exit status and its output: stdout, then stderr (where it writes what FAILED)."""
    result = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr


def test_compose_prometheus_loads_its_config_and_rules(promtool: str, tmp_path: Path) -> None:
    """The files compose mounts into the Prometheus container, where it mounts them: ``rule_files`` resolves
    relative to the config there, and promtool checks the rules it names too."""
    service = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    [config] = [arg.partition("=")[2] for arg in service["command"] if arg.startswith("--config.file=")]
    for volume in service["volumes"]:
        source, _, target = volume.partition(":")
        if source.startswith("."):  # a file of ours, not a named volume
            container_path = tmp_path / target.partition(":")[0].lstrip("/")
            container_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(COMPOSE.parent / source, container_path)
    status, output = run(promtool, "check", "config", tmp_path / config.lstrip("/"))
    assert status == 0, output
    assert f"SUCCESS: {len(RULE_NAMES)} rules found" in output, output


def _kubernetes_rules(tmp_path: Path) -> Path:
    """The PrometheusRule's ``spec.groups`` as a rule file."""
    path = tmp_path / "prometheus-rule-groups.yml"
    spec = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "rule_file", [lambda _: ALERTS, _kubernetes_rules], ids=["alerts.yml", "prometheus-rule.yaml"]
)
def test_the_rules_are_valid(promtool: str, tmp_path: Path, rule_file: Callable[[Path], Path]) -> None:
    status, output = run(promtool, "check", "rules", rule_file(tmp_path))
    assert status == 0, output
    assert f"SUCCESS: {len(RULE_NAMES)} rules found" in output, output


def test_the_alerts_unit_tests_pass(promtool: str) -> None:
    status, output = run(promtool, "test", "rules", ALERTS_TEST)
    assert status == 0, output


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    """promtool passes a check of an alert name no rule has (nothing fires under it): each check names a rule,
    and each rule has a check where it fires and one where it does not."""
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    checks = [check for group in tests["tests"] for check in group["alert_rule_test"]]
    assert {check["alertname"] for check in checks} <= set(RULE_NAMES)
    fires = {check["alertname"] for check in checks if check.get("exp_alerts")}
    quiet = {check["alertname"] for check in checks if not check.get("exp_alerts")}
    assert [name for name in RULE_NAMES if name not in fires] == []
    assert [name for name in RULE_NAMES if name not in quiet] == []


def test_no_expected_annotation_shows_an_empty_label() -> None:
    """An annotation that prints a label some series lack renders a hole ("(undecodable )", "invalid ()");
    promtool only compares, so an expectation copied from such a rendering passed: guard every expectation."""
    hole = re.compile(r"\(\s*\)|\(\s|\s\)|\s{2}|^\s|\s$")
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    holes = [
        f"{check['alertname']} at {check['eval_time']}: {name}: {text!r}"
        for group in tests["tests"]
        for check in group["alert_rule_test"]
        for alert in check.get("exp_alerts") or []
        for name, text in (alert.get("exp_annotations") or {}).items()
        if hole.search(text)
    ]
    assert holes == []


# Rules changed as a slip would change them, and the alert whose checks must then fail.
BROKEN_RULES: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "shorter for": ("MtrankTargetDown", lambda rule: {**rule, "for": "1m"}),
    "longer for": ("MtrankRankerLatencyHigh", lambda rule: {**rule, "for": "11m"}),
    "other severity": ("MtrankEventsDropped", lambda rule: {**rule, "labels": {"severity": "warning"}}),
    "summary label": (
        "MtrankRetrievalUnreachableFromRanker",
        lambda rule: {
            **rule,
            "annotations": {
                **rule["annotations"],
                "summary": rule["annotations"]["summary"].replace("$labels.target", "$labels.instance"),
            },
        },
    ),
    # What the rule was: rate() never counts the failure a new series appears with.
    "rate of a counter created by its first increment": (
        "MtrankModelLoadFailed",
        lambda rule: {
            **rule,
            "expr": 'sum(rate(mtrank_model_load_total{outcome="failed"}[15m]))'
            " by (namespace, job, instance, model, version) > 0",
        },
    ),
}


@pytest.mark.parametrize(("alert", "breaks"), BROKEN_RULES.values(), ids=BROKEN_RULES.keys())
def test_the_unit_tests_catch_a_broken_rule(
    promtool: str, tmp_path: Path, alert: str, breaks: Callable[[dict], dict]
) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        group["rules"] = [breaks(rule) if rule["alert"] == alert else rule for rule in group["rules"]]
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    # The alert's own groups: each group evaluates every rule, and all of them take seconds.
    tests["tests"] = [
        group for group in tests["tests"] if any(c["alertname"] == alert for c in group["alert_rule_test"])
    ]
    (tmp_path / ALERTS_TEST.name).write_text(yaml.safe_dump(tests, sort_keys=False))
    status, output = run(promtool, "test", "rules", tmp_path / ALERTS_TEST.name)
    assert status == 1, output
    assert f"alertname: {alert}," in output, output
