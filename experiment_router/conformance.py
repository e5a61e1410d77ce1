"""Run GrowthBook's cross-SDK conformance suite (cases.json) against this router's functions.

Required sections must pass in full. Two exclusion rules: `run` and `stickyBucket` cases whose context or
experiment carries a URL (`url`, query-string forcing, URL targeting), since a recommender's requests have no
page URL; and `feature` cases with a contextual bandit rule (`contextualVariations`), which this router does not
implement. A `feature` case compares value, on, off, source, ruleId and the experiment result; the experiment
object the SDK echoes back is not compared.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiment_router.conditions import eval_condition
from experiment_router.errors import ConfigError
from experiment_router.evaluation import (
    ExperimentResult,
    context_from_growthbook,
    eval_feature,
    run_experiment,
    spec_from_growthbook,
    unit_string,
)
from experiment_router.hashing import bucket_ranges, choose_variation, equal_weights, hash_unit, in_namespace
from experiment_router.jsvalues import js_truthy
from experiment_router.sticky import InMemoryStickyBucketStore

REQUIRED_SECTIONS = (
    "hash",
    "getBucketRange",
    "chooseVariation",
    "inNamespace",
    "getEqualWeights",
    "evalCondition",
    "run",
    "stickyBucket",
    "feature",
)
_URL_KEYS = ("url", "urlPatterns", "urlRegex")
EXCLUSION_REASONS = {
    "run": "depend on URLs/query strings",
    "stickyBucket": "depend on URLs/query strings",
    "feature": "contextual bandit rules, not implemented",
}


def is_excluded(section: str, case: list) -> bool:
    """The exclusion rules: a run/stickyBucket case whose context or experiment names a URL, a feature case
    with a contextual bandit rule."""
    if not isinstance(case, list) or len(case) < 3:  # malformed: not dropped, so it is checked and fails
        return False
    context = case[1] if isinstance(case[1], dict) else {}
    if section == "feature":
        rules = (
            rule for feature in context.get("features", {}).values() for rule in feature.get("rules", [])
        )
        return any("contextualVariations" in rule for rule in rules)
    if section not in ("run", "stickyBucket"):
        return False
    experiment = case[2] if section == "run" and isinstance(case[2], dict) else {}
    return any(context.get(k) for k in _URL_KEYS) or any(experiment.get(k) for k in _URL_KEYS)


def _floor8(ranges: list) -> list[list[float]]:
    return [[math.floor(x * 1e8) / 1e8 for x in r] for r in ranges]


def _check_hash(case: list) -> bool:
    seed, value, version, expected = case
    return hash_unit(seed, value, version) == expected


def _check_bucket_range(case: list) -> bool:
    _, (n, coverage, weights), expected = case
    return _floor8(bucket_ranges(n, coverage, weights)) == _floor8(expected)


def _check_choose(case: list) -> bool:
    _, n, ranges, expected = case
    return choose_variation(n, ranges) == expected


def _check_namespace(case: list) -> bool:
    _, unit_id, namespace, expected = case
    return in_namespace(unit_id, namespace) == expected


def _check_equal_weights(case: list) -> bool:
    n, expected = case
    return [round(w, 8) for w in equal_weights(n)] == [round(w, 8) for w in expected]


def _check_condition(case: list) -> bool:
    _, condition, attributes, expected, *rest = case
    return eval_condition(attributes, condition, rest[0] if rest else None) == expected


def _check_run(case: list) -> bool:
    _, context, experiment, value, in_experiment, hash_used = case
    res = run_experiment(spec_from_growthbook(experiment), context_from_growthbook(context))
    return (res.value, res.in_experiment, res.hash_used) == (value, in_experiment, hash_used)


def result_as_growthbook(res: ExperimentResult) -> dict[str, Any]:
    """The fields of GrowthBook's experiment result that the stickyBucket and feature cases compare."""
    named = {"name": res.name} if res.name else {}  # the SDK sets it only when the variation has one
    return named | {
        "bucket": res.bucket,
        "featureId": res.feature_id,
        "hashAttribute": res.hash_attribute,
        "hashUsed": res.hash_used,
        "hashValue": res.hash_value,
        "inExperiment": res.in_experiment,
        "key": res.key,
        "stickyBucketUsed": res.sticky_bucket_used,
        "value": res.value,
        "variationId": res.variation_id,
    }


def _check_sticky(case: list) -> bool:
    _, context, docs, feature_id, expected, expected_docs = case
    store = InMemoryStickyBucketStore({str(i): d for i, d in enumerate(docs)})
    res = eval_feature(feature_id, context_from_growthbook(context, sticky_store=store)).experiment_result
    got = result_as_growthbook(res) if res is not None else None
    attributes = context.get("attributes", {})
    # the SDKs compare the documents of this user only (those of other ids stay untouched in the store)
    user_docs = {
        key: doc
        for key, doc in store.snapshot().items()
        if unit_string(attributes.get(doc["attributeName"])) == doc["attributeValue"]
    }
    return got == expected and user_docs == expected_docs


def _check_feature(case: list) -> bool:
    _, context, feature_id, expected = case
    res = eval_feature(feature_id, context_from_growthbook(context))
    got: dict[str, Any] = {
        "value": res.value,
        "on": js_truthy(res.value),
        "off": not js_truthy(res.value),
        "source": res.source,
        "ruleId": res.rule_id,
    }
    if res.experiment_result is not None:
        result = result_as_growthbook(res.experiment_result)
        if result["bucket"] is None:  # the SDK leaves it out when no hash decided
            del result["bucket"]
        got["experimentResult"] = result
    return got == {k: v for k, v in expected.items() if k != "experiment"}


CHECKS: dict[str, Callable[[list], bool]] = {
    "hash": _check_hash,
    "getBucketRange": _check_bucket_range,
    "chooseVariation": _check_choose,
    "inNamespace": _check_namespace,
    "getEqualWeights": _check_equal_weights,
    "evalCondition": _check_condition,
    "run": _check_run,
    "stickyBucket": _check_sticky,
    "feature": _check_feature,
}


def check_case(section: str, case: list) -> bool:
    """Whether one case passes; an exception counts as a failure."""
    try:
        return CHECKS[section](case)
    except Exception:  # a crash on a case is a failed case, reported as such
        return False


@dataclass(frozen=True)
class SectionReport:
    """Counts for one section of the suite."""

    section: str
    passed: int
    failed: int
    excluded: int
    failed_names: tuple[str, ...]


def load_cases(path: str | Path) -> dict[str, Any]:
    """Read cases.json.

    Raises:
        ConfigError: the file cannot be read, is not JSON, or is not a mapping of section name to case list.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            cases = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read cases: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read cases: not UTF-8 text ({exc.reason})", file=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc.msg}", file=str(path), line=exc.lineno) from None
    if not isinstance(cases, dict):
        raise ConfigError(
            "expected GrowthBook's cases.json: an object of section name to case list", file=str(path)
        )
    for section in REQUIRED_SECTIONS:
        if not isinstance(cases.get(section, []), list):
            raise ConfigError(f"section {section!r} must be a list of cases", file=str(path))
    return cases


def iter_cases(cases: dict[str, Any], section: str) -> Iterator[tuple[list, bool]]:
    """Each case of `section` with whether the exclusion rule drops it."""
    for case in cases.get(section, []):
        yield case, is_excluded(section, case)


def _case_name(case: Any, index: int) -> str:
    """A failed case's name: its first field, or its place in the section when the case is malformed."""
    if isinstance(case, list) and case:
        return str(case[0])
    return f"case #{index} ({json.dumps(case)[:60]})"


def run_suite(cases: dict[str, Any]) -> list[SectionReport]:
    """Evaluate every required section."""
    reports = []
    for section in REQUIRED_SECTIONS:
        passed = failed = excluded = 0
        failed_names: list[str] = []
        for index, (case, skip) in enumerate(iter_cases(cases, section)):
            if skip:
                excluded += 1
            elif check_case(section, case):
                passed += 1
            else:
                failed += 1
                failed_names.append(_case_name(case, index))
        reports.append(SectionReport(section, passed, failed, excluded, tuple(failed_names)))
    return reports
