"""Targeting conditions, rollouts, experiments and sticky bucketing replayed from GrowthBook's JS SDK (1.8.0).

The fixtures (data/js_sdk_conditions.json, js_sdk_rollouts.json, js_sdk_experiments.json and js_sdk_sticky.json,
written by `python -m tests.experiment_router.make_js_fixtures conditions|rollouts|experiments|sticky --sdk-dir
DIR`) hold the SDK's verdicts where the spec's suite is silent: loose literals ("5" for 5, 1 for true), `===`
and `includes`, relational comparisons of mixed types ("0x10" > 15, [3] > 2, strings by UTF-16 code units),
paths into arrays, saved groups, rollouts of coverage 0 for units hashed to exactly 0, experiments whose fields
are null, empty or out of range, and sticky buckets kept or dropped while an experiment changes. The reference
evaluator (and, for conditions, the Router's compiled path) must reproduce every verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from experiment_router.conditions import VALUE_OPERATORS, compile_condition, eval_condition
from experiment_router.evaluation import (
    EvalContext,
    FeatureResult,
    eval_feature,
    run_experiment,
    spec_from_growthbook,
)
from experiment_router.hashing import hash_unit
from experiment_router.sticky import InMemoryStickyBucketStore
from tests.experiment_router.jsnode import decode

DATA = Path(__file__).parent / "data"
CONDITIONS = decode((DATA / "js_sdk_conditions.json").read_text(encoding="utf-8"))
ROLLOUTS = decode((DATA / "js_sdk_rollouts.json").read_text(encoding="utf-8"))
GROUPS = CONDITIONS["saved_groups"]


def _compiled(attributes: Any, condition: Any, groups: dict) -> bool:
    return compile_condition(condition)(attributes, groups)


EVALUATORS: dict[str, Callable[[Any, Any, dict], bool]] = {"reference": eval_condition, "compiled": _compiled}


def _verdict(evaluate: Callable[[Any, Any, dict], bool], attributes: Any, condition: Any) -> bool | str:
    """The evaluator's answer, or "throws" where it raises (as the SDK does on a null `$elemMatch`)."""
    try:
        return bool(evaluate(attributes, condition, GROUPS))
    except TypeError:
        return "throws"


def test_condition_fixture_reaches_every_operator_and_both_verdicts() -> None:
    cases = CONDITIONS["cases"]
    assert len(cases) >= 3000
    assert {verdict for _, _, verdict in cases} >= {True, False}
    operators = {
        op
        for _, condition, _ in cases
        for value in condition.values()
        if isinstance(value, dict)
        for op in value
    }
    assert operators >= VALUE_OPERATORS


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_conditions_reproduce_the_sdk(evaluator: str) -> None:
    evaluate = EVALUATORS[evaluator]
    cases = CONDITIONS["cases"]
    wrong = [(a, c, sdk) for a, c, sdk in cases if _verdict(evaluate, a, c) != sdk]
    assert not wrong[:5], f"{len(wrong)} of {len(cases)} differ"


@pytest.mark.parametrize(
    ("attributes", "condition"),
    [
        ({"age": "5"}, {"age": 5}),  # `value * 1 === 5`
        ({"beta": 1}, {"beta": True}),  # `!!value === true`
        ({"tags": ["a", "b"]}, {"tags": "a,b"}),  # `value + "" === "a,b"`
        ({"build": "0x10"}, {"build": {"$gt": 15}}),
        ({"score": [3]}, {"score": {"$gt": 2}}),
        ({"name": "\U0001f600"}, {"name": {"$lt": "\uffff"}}),  # UTF-16 code units, not code points
        ({"tags": ["x", "y"]}, {"tags.length": 2}),
    ],
)
def test_javascript_comparisons_that_python_reads_otherwise(attributes: dict, condition: dict) -> None:
    assert eval_condition(attributes, condition)
    assert compile_condition(condition)(attributes, {})


@pytest.mark.parametrize(
    ("attributes", "condition"),
    [
        ({"age": "1_000"}, {"age": {"$gt": 5}}),  # Number("1_000") is NaN
        ({"age": "inf"}, {"age": {"$gt": 5}}),
        ({"tags": [1]}, {"tags": {"$eq": [1]}}),  # `===` compares arrays by reference
        ({"age": 5}, {"age": {"$in": ["5"]}}),  # `includes` does not coerce
        ({"flag": True}, {"flag": {}}),  # {} is no operator object: JSON text "true" vs "{}"
    ],
)
def test_javascript_comparisons_that_fail_where_python_would_match(attributes: dict, condition: dict) -> None:
    assert not eval_condition(attributes, condition)
    assert not compile_condition(condition)(attributes, {})


def _forced(rule: dict, unit: str) -> str:
    features = {"f": {"defaultValue": "off", "rules": [rule]}}
    return eval_feature("f", EvalContext(attributes={"id": unit}, features=features)).value


def test_rollouts_reproduce_the_sdk() -> None:
    rules = ROLLOUTS["rules"]
    wrong = [(rules[i], unit, sdk) for i, unit, sdk in ROLLOUTS["cases"] if _forced(rules[i], unit) != sdk]
    assert not wrong[:5], f"{len(wrong)} of {len(ROLLOUTS['cases'])} differ"


def test_a_zero_percent_rollout_serves_nobody_not_even_a_unit_hashed_to_zero() -> None:
    assert hash_unit("f", "u2567", 1) == 0  # n <= coverage would let it in
    assert _forced({"force": "on", "coverage": 0}, "u2567") == "off"
    assert _forced({"force": "on", "coverage": 0.001}, "u2567") == "on"


EXPERIMENTS = decode((DATA / "js_sdk_experiments.json").read_text(encoding="utf-8"))


def test_experiments_with_odd_fields_reproduce_the_sdk() -> None:
    cases = EXPERIMENTS["cases"]
    assert sum(in_experiment for _, _, (in_experiment, *_) in cases) > len(cases) / 10  # many enrolled too
    wrong = []
    for exp, attributes, sdk in cases:
        res = run_experiment(spec_from_growthbook(exp), EvalContext(attributes=attributes))
        if [res.in_experiment, res.variation_id, res.hash_used, res.bucket] != sdk:
            wrong.append((exp, attributes, sdk))
    assert not wrong[:5], f"{len(wrong)} of {len(cases)} differ"


@pytest.mark.parametrize(
    ("fields", "enrolled"),
    [
        ({"coverage": None}, False),  # null * weight: every range empty
        ({"ranges": []}, False),  # an empty list is still the ranges
        ({"namespace": []}, False),  # ... and still a namespace, which holds nobody
        ({"filters": [], "namespace": ["ns", 0, 0]}, True),  # filters, even none, replace the namespace
        ({"hashAttribute": ""}, True),  # "" means "id"
    ],
)
def test_odd_experiment_fields_read_as_javascript_reads_them(fields: dict, enrolled: bool) -> None:
    exp = {"key": "e", "variations": [0, 1], **fields}
    assert (
        run_experiment(spec_from_growthbook(exp), EvalContext(attributes={"id": "u1"})).in_experiment
        is enrolled
    )


def test_a_sticky_bucket_keeps_a_feature_rule_user_whose_attributes_left_its_condition() -> None:
    """As the SDK does (checked with its StickyBucketService): the rule's condition gates new users only."""
    rule = {
        "key": "exp",
        "variations": ["a", "b"],
        "condition": {"country": "NL"},
        "meta": [{"key": "a"}, {"key": "b"}],
    }
    features = {"f": {"defaultValue": "off", "rules": [rule]}}
    store = InMemoryStickyBucketStore()

    def evaluate(user: str, country: str) -> FeatureResult:
        ctx = EvalContext(attributes={"id": user, "country": country}, features=features, sticky_store=store)
        return eval_feature("f", ctx)

    first = evaluate("u1", "NL")
    assert first.source == "experiment" and first.experiment_result is not None
    moved = evaluate("u1", "DE")
    assert (moved.value, moved.source) == (first.value, "experiment")
    assert moved.experiment_result is not None and moved.experiment_result.sticky_bucket_used
    assert evaluate("u2", "DE").source == "defaultValue"  # a new user is still targeted


def test_a_feature_rule_is_no_experiment_of_its_own_status() -> None:
    """The SDK copies a rule's experiment fields, not `active` or `status`: those belong to whole experiments."""
    features = {"f": {"defaultValue": "off", "rules": [{"variations": ["a", "b"], "active": False}]}}
    res = eval_feature("f", EvalContext(attributes={"id": "u1"}, features=features))
    assert res.source == "experiment"


STICKY = decode((DATA / "js_sdk_sticky.json").read_text(encoding="utf-8"))


def test_sticky_bucketing_through_changing_experiments_reproduces_the_sdk() -> None:
    cases = STICKY["cases"]
    assert sum(r[2] is not None and r[2][2] for _, (results, _) in cases for r in results) > 20  # sticky used
    wrong = []
    for steps, (sdk_results, sdk_docs) in cases:
        store = InMemoryStickyBucketStore()
        results = []
        for features, attributes in steps:
            res = eval_feature("f", EvalContext(attributes=attributes, features=features, sticky_store=store))
            e = res.experiment_result
            summary = [e.in_experiment, e.variation_id, e.sticky_bucket_used, e.hash_attribute] if e else None
            results.append([res.value, res.source, summary])
        if results != sdk_results or store.snapshot() != sdk_docs:
            wrong.append(steps)
    assert not wrong[:3], f"{len(wrong)} of {len(cases)} sequences differ"
