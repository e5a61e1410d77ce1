"""Whole-experiment evaluation with GrowthBook's semantics (the spec's `run`), sticky bucketing included.

This is the reference evaluator: the conformance suite drives it directly, and the compiled `Router` is
tested against it. It reads no clock and does no I/O other than through the sticky store it is given.
"""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from experiment_router.conditions import eval_condition
from experiment_router.hashing import bucket_ranges, choose_variation, hash_unit, in_namespace, in_range
from experiment_router.jsvalues import js_compare, js_strict_equal, js_string, js_truthy
from experiment_router.sticky import StickyBucketStore, StickyDoc, assignment_key

logger = logging.getLogger(__name__)


@dataclass
class ExperimentSpec:
    """An experiment as GrowthBook describes it (snake_case names of the SDK's fields)."""

    key: str
    variations: Sequence[Any]
    weights: Sequence[float] | None = None
    coverage: float | None = None
    condition: Mapping[str, Any] | None = None
    parent_conditions: Sequence[Mapping[str, Any]] | None = None
    namespace: Sequence[Any] | None = None
    filters: Sequence[Mapping[str, Any]] | None = None
    ranges: Sequence[Sequence[float]] | None = None
    force: int | None = None
    hash_attribute: str = "id"
    fallback_attribute: str | None = None
    hash_version: int = 1
    seed: str | None = None
    meta: Sequence[Mapping[str, Any]] | None = None
    active: bool = True
    status: str | None = None
    bucket_version: int = 0
    min_bucket_version: int = 0
    disable_sticky_bucketing: bool = False


@dataclass
class EvalContext:
    """Everything about the user and the environment an evaluation may read."""

    attributes: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    qa_mode: bool = False
    forced_variations: Mapping[str, int] = field(default_factory=dict)
    saved_groups: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    features: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sticky_store: StickyBucketStore | None = None


@dataclass(frozen=True)
class ExperimentResult:
    """Outcome of one evaluation; `hash_used` is what decides whether to log an exposure."""

    in_experiment: bool
    variation_id: int
    value: Any
    hash_used: bool
    hash_attribute: str
    hash_value: Any  # the attribute's value as given (123, not "123"), "" when the user had none
    key: str
    bucket: float | None = None
    sticky_bucket_used: bool = False
    feature_id: str | None = None
    passthrough: bool = False  # the variation's meta says: count the exposure, serve the next rule's value
    name: str = ""  # the variation's display name from its meta, if any


def unit_string(value: Any) -> str | None:
    """The string GrowthBook's JS SDK hashes for an attribute value, or None when it sees no value.

    The SDK hashes only truthy values (so `0`, `false`, `""` and null leave the user out) and prints them
    as JavaScript's `String()` does (`2273199612178534537` is "2273199612178534700", `1e21` is "1e+21").
    """
    if type(value) is str:  # the usual case, on every request
        return value or None
    return js_string(value) if js_truthy(value) else None


def hash_identity(
    attributes: Mapping[str, Any], attribute: str | None, fallback: str | None = None
) -> tuple[str, str | None]:
    """(attribute used, its value as a string or None); the fallback serves only when the first has none.

    No attribute name (None or "") means "id", as in the SDK (`attr || "id"`).
    """
    attribute = attribute or "id"
    value = unit_string(attributes.get(attribute))
    if value is None and fallback:
        fallback_value = unit_string(attributes.get(fallback))
        if fallback_value is not None:
            return fallback, fallback_value
    return attribute, value


def run_experiment(exp: ExperimentSpec, ctx: EvalContext, feature_id: str | None = None) -> ExperimentResult:
    """Evaluate `exp` for the user in `ctx`, following the GrowthBook SDK's steps in order."""
    sticky_on = ctx.sticky_store is not None and not exp.disable_sticky_bucketing
    fallback = exp.fallback_attribute if sticky_on else None
    hash_attribute, hash_value = hash_identity(ctx.attributes, exp.hash_attribute, fallback)

    def result(variation: int = -1, **extra: Any) -> ExperimentResult:
        inside = 0 <= variation < len(exp.variations)
        variation = variation if inside else 0
        meta = exp.meta[variation] if exp.meta and variation < len(exp.meta) else {}
        key = js_string(meta["key"]) if js_truthy(meta.get("key")) else str(variation)  # `meta.key || index`
        return ExperimentResult(
            in_experiment=inside,
            variation_id=variation,
            value=exp.variations[variation] if exp.variations else None,
            hash_used=extra.pop("hash_used", False),
            hash_attribute=hash_attribute,
            hash_value=ctx.attributes.get(hash_attribute) if hash_value is not None else "",
            key=key,
            feature_id=feature_id,
            passthrough=js_truthy(meta.get("passthrough")),
            name=js_string(meta["name"]) if js_truthy(meta.get("name")) else "",
            **extra,
        )

    if len(exp.variations) < 2 or not ctx.enabled:
        return result()
    forced = ctx.forced_variations.get(exp.key)
    if forced is not None:
        return result(forced)
    if exp.status == "draft" or not exp.active:
        return result()
    if hash_value is None:
        return result()

    assigned = -1
    found_sticky = blocked = False
    if sticky_on:
        assigned, blocked = _sticky_variation(exp, ctx)
        found_sticky = assigned >= 0

    if not found_sticky:
        if exp.filters is not None:  # even an empty list replaces the namespace check, as in the SDK
            if _filtered_out(exp.filters, ctx.attributes):
                return result()
        elif exp.namespace is not None and not in_namespace(hash_value, exp.namespace):
            return result()
        if exp.condition and not eval_condition(ctx.attributes, exp.condition, ctx.saved_groups):
            return result()
        if exp.parent_conditions and _prerequisites(exp.parent_conditions, ctx, set()) != "pass":
            return result()

    n = hash_unit(exp.seed or exp.key, hash_value, exp.hash_version or 1)
    if n is None:
        return result()
    if not found_sticky:
        ranges = (
            exp.ranges
            if exp.ranges is not None
            else bucket_ranges(
                len(exp.variations), 1.0 if exp.coverage is None else exp.coverage, exp.weights
            )
        )
        assigned = choose_variation(n, ranges)
    if blocked:
        return result(sticky_bucket_used=True)
    if assigned < 0:
        return result()
    if exp.force is not None:
        return result(exp.force)
    if ctx.qa_mode or exp.status == "stopped":
        return result()

    res = result(assigned, hash_used=True, bucket=n, sticky_bucket_used=found_sticky)
    if sticky_on:
        _persist_sticky(exp, ctx, hash_attribute, hash_value, res.key)
    return res


def _filtered_out(filters: Sequence[Mapping[str, Any]], attributes: Mapping[str, Any]) -> bool:
    for flt in filters:
        _, value = hash_identity(attributes, flt.get("attribute"))
        if value is None:
            return True
        # JavaScript concatenates an absent seed as "undefined"
        n = hash_unit(
            js_string(flt["seed"]) if "seed" in flt else "undefined", value, flt.get("hashVersion") or 2
        )
        if n is None or not any(in_range(n, r) for r in flt["ranges"]):
            return True
    return False


def _sticky_assignments(exp: ExperimentSpec, ctx: EvalContext) -> dict[str, str]:
    assert ctx.sticky_store is not None
    merged: dict[str, str] = {}
    identities = [hash_identity(ctx.attributes, exp.hash_attribute)]
    if exp.fallback_attribute:
        identities.insert(0, hash_identity(ctx.attributes, exp.fallback_attribute))
    for name, value in identities:  # the hash attribute's document wins over the fallback's
        doc = ctx.sticky_store.get(name, value) if value is not None else None
        if doc:
            merged.update(doc.get("assignments", {}))
    return merged


def _sticky_variation(exp: ExperimentSpec, ctx: EvalContext) -> tuple[int, bool]:
    """(sticky variation or -1, whether an older bucket version below min_bucket_version blocks the user)."""
    assignments = _sticky_assignments(exp, ctx)
    if any(assignment_key(exp.key, v) in assignments for v in range(exp.min_bucket_version or 0)):
        return -1, True
    variation_key = assignments.get(assignment_key(exp.key, exp.bucket_version or 0))
    if variation_key is None:
        return -1, False
    keys = [str(m.get("key")) for m in (exp.meta or [])]
    return (keys.index(variation_key) if variation_key in keys else -1), False


def _persist_sticky(
    exp: ExperimentSpec, ctx: EvalContext, attribute: str, value: str, variation_key: str
) -> None:
    assert ctx.sticky_store is not None
    existing = ctx.sticky_store.get(attribute, value)
    old = dict(existing["assignments"]) if existing else {}
    new = {**old, assignment_key(exp.key, exp.bucket_version or 0): variation_key}
    if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
        doc: StickyDoc = {"attributeName": attribute, "attributeValue": value, "assignments": new}
        ctx.sticky_store.save(doc)


@dataclass(frozen=True)
class FeatureResult:
    """Value of a feature flag and, when an experiment rule decided it, that experiment's result."""

    value: Any
    source: str
    experiment_result: ExperimentResult | None = None
    rule_id: str = ""  # the `id` of the rule that decided, "" for the default value


def eval_feature(feature_id: str, ctx: EvalContext, _stack: frozenset[str] = frozenset()) -> FeatureResult:
    """Evaluate a feature flag's rules: prerequisites, filters, force rules and rollouts, experiment rules.

    Tracks (remote evaluation), contextual bandit rules and URL targeting are not supported here.
    """
    feature = ctx.features.get(feature_id)
    if feature is None:
        return FeatureResult(None, "unknownFeature")
    if feature_id in _stack:
        return FeatureResult(None, "cyclicPrerequisite")
    stack = _stack | {feature_id}
    for rule in feature.get("rules", []):
        if rule.get("parentConditions"):
            outcome = _prerequisites(rule["parentConditions"], ctx, stack)
            if outcome == "gate":
                return FeatureResult(None, "prerequisite")
            if outcome == "cyclic":
                return FeatureResult(None, "cyclicPrerequisite")
            if outcome == "fail":
                continue
        if rule.get("filters") and _filtered_out(rule["filters"], ctx.attributes):
            continue
        if "force" in rule:
            if rule.get("condition") and not eval_condition(
                ctx.attributes, rule["condition"], ctx.saved_groups
            ):
                continue
            if not _in_rollout(rule, feature_id, ctx):
                continue
            return FeatureResult(rule["force"], "force", rule_id=rule.get("id") or "")
        if rule.get("variations") is None:
            continue
        # The rule's condition runs inside the experiment, where a sticky bucket skips it (as targeting does).
        res = run_experiment(_rule_experiment(rule, feature_id), ctx, feature_id)
        if res.in_experiment and not res.passthrough:
            return FeatureResult(res.value, "experiment", res, rule.get("id") or "")
    return FeatureResult(feature.get("defaultValue"), "defaultValue")


# Fields a feature rule hands to the experiment it runs when set (truthy), as the SDK copies them; a rule's
# own `active`, `status`, `force` or `parentConditions` are not the experiment's.
_RULE_EXPERIMENT_FIELDS = (
    "weights", "hashAttribute", "fallbackAttribute", "disableStickyBucketing", "namespace", "meta", "ranges",
    "seed", "hashVersion", "filters", "condition",
)  # fmt: skip


def _rule_experiment(rule: Mapping[str, Any], feature_id: str) -> ExperimentSpec:
    """The experiment an experiment rule runs: its key (or the feature's), variations and copied fields."""
    data = {k: rule[k] for k in _RULE_EXPERIMENT_FIELDS if js_truthy(rule.get(k))}
    data.update({k: rule[k] for k in ("coverage", "bucketVersion", "minBucketVersion") if k in rule})
    data["key"] = rule.get("key") or feature_id
    data["variations"] = rule["variations"]
    return spec_from_growthbook(data)


def _in_rollout(rule: Mapping[str, Any], feature_id: str, ctx: EvalContext) -> bool:
    """The SDK's isIncludedInRollout, reading the rule's fields as JavaScript does: no range and no coverage
    key includes everyone, coverage 0 nobody (even a unit hashed to exactly 0), a null coverage compares as 0,
    and a range that is not a list of two bounds holds nobody."""
    rng = rule.get("range")
    has_range = js_truthy(rng)  # an empty list is a range (truthy in JavaScript), just an empty one
    if not has_range and "coverage" not in rule:
        return True
    coverage = rule.get("coverage")
    if not has_range and js_strict_equal(coverage, 0):
        return False
    _, value = hash_identity(ctx.attributes, rule.get("hashAttribute"))
    if value is None:
        return False
    n = hash_unit(rule.get("seed") or feature_id, value, rule.get("hashVersion") or 1)
    if n is None:
        return False
    if has_range:
        bounds = rng if isinstance(rng, list) else []
        return (
            len(bounds) >= 2
            and js_compare(n, bounds[0], operator.ge)
            and js_compare(n, bounds[1], operator.lt)
        )
    return js_compare(n, coverage, operator.le)


def _prerequisites(
    parents: Sequence[Mapping[str, Any]], ctx: EvalContext, stack: frozenset[str] | set
) -> str:
    for parent in parents:
        parent_id = parent.get("id")
        if not isinstance(parent_id, str):
            continue
        res = eval_feature(parent_id, ctx, frozenset(stack))
        if res.source == "cyclicPrerequisite":
            return "cyclic"
        if not eval_condition({"value": res.value}, parent.get("condition") or {}, ctx.saved_groups):
            return "gate" if parent.get("gate") else "fail"
    return "pass"


_SPEC_FIELDS = {
    "key": "key", "variations": "variations", "weights": "weights", "coverage": "coverage",
    "condition": "condition", "parentConditions": "parent_conditions", "namespace": "namespace",
    "filters": "filters", "ranges": "ranges", "force": "force", "hashAttribute": "hash_attribute",
    "fallbackAttribute": "fallback_attribute", "hashVersion": "hash_version", "seed": "seed", "meta": "meta",
    "active": "active", "status": "status", "bucketVersion": "bucket_version",
    "minBucketVersion": "min_bucket_version", "disableStickyBucketing": "disable_sticky_bucketing",
}  # fmt: skip


def spec_from_growthbook(data: Mapping[str, Any], default_key: str = "") -> ExperimentSpec:
    """Build an ExperimentSpec from a GrowthBook (camelCase) experiment or feature-rule object."""
    kwargs = {ours: data[theirs] for theirs, ours in _SPEC_FIELDS.items() if data.get(theirs) is not None}
    if "coverage" in data and data["coverage"] is None:  # JavaScript multiplies by null: every range empty
        kwargs["coverage"] = 0.0
    kwargs.setdefault("key", default_key)
    return ExperimentSpec(**kwargs)


def context_from_growthbook(
    data: Mapping[str, Any], sticky_store: StickyBucketStore | None = None
) -> EvalContext:
    """Build an EvalContext from a GrowthBook (camelCase) context object."""
    return EvalContext(
        attributes=data.get("attributes") or {},
        enabled=data.get("enabled", True),
        qa_mode=data.get("qaMode", False),
        forced_variations=data.get("forcedVariations") or {},
        saved_groups=data.get("savedGroups") or {},
        features=data.get("features") or {},
        sticky_store=sticky_store,
    )
