"""Config changes to a running experiment: which users keep their variant (no sticky store, as in the ranker)."""

from __future__ import annotations

from typing import Any

import pytest

from experiment_router import Router
from experiment_router.changes import ExperimentChange, compare, describe
from tests.experiment_router.helpers import base_config


def _router(**fields: Any) -> Router:
    data = base_config()
    exp = data["experiments"][0]
    weights = fields.pop("weights", None)
    if weights is not None:
        for variation, weight in zip(exp["variations"], weights, strict=True):
            variation["weight"] = weight
    exp.update(fields)
    return Router.from_dict(data)


def _change(old: Router, new: Router) -> ExperimentChange:
    (change,) = compare(old, new)
    return change


def test_ramping_the_weights_moves_users_between_variants() -> None:
    # GrowthBook's ranges are cumulative: control [0, 0.9) -> [0, 0.5), so hashes in [0.5, 0.9) switch
    change = _change(_router(weights=[0.9, 0.1]), _router(weights=[0.5, 0.5]))
    assert change.switched / change.users == pytest.approx(0.4, abs=0.02)
    assert change.left == change.entered == 0
    assert "switch variant" in describe(change)


def test_ramping_the_coverage_keeps_every_enrolled_user_in_their_variant() -> None:
    change = _change(_router(coverage=0.2), _router(coverage=0.6))
    assert change.switched == 0 and change.left == 0
    assert change.entered / change.users == pytest.approx(0.4, abs=0.02)


def test_a_bucket_version_without_a_sticky_store_changes_nothing_a_new_seed_re_randomises() -> None:
    old = _router()
    assert _change(old, _router(bucket_version=1)).switched == 0
    assert _change(old, _router(seed="exp-a-phase-2")).switched / 10_000 == pytest.approx(0.5, abs=0.02)


def test_removing_a_variation_moves_users_stopping_sends_them_to_the_default() -> None:
    data = base_config()
    data["experiments"][0]["variations"].append(
        {"key": "third", "payload": {"model_name": "mmoe", "model_version": "1"}}
    )
    change = _change(Router.from_dict(data), _router())
    assert change.switched / change.users == pytest.approx(0.5, abs=0.02)  # equal thirds -> halves, by key
    stopped = _change(_router(), _router(status="stopped"))
    assert stopped.left == stopped.users and stopped.switched == 0


def test_only_experiments_in_both_configs_are_compared() -> None:
    data = base_config()
    data["experiments"][0]["key"] = "exp-a-phase-2"
    assert compare(_router(), Router.from_dict(data)) == []


def test_a_user_forced_into_an_interleaving_arm_counts_in_its_one_bucket_as_in_preview() -> None:
    """preview counts an interleaving experiment as one bucket, QA users forced into an arm included; the
    comparison mapped the second arm's index past its keys and lost such a user from both configs."""
    from tests.experiment_router.test_interleaving import interleaving, router_with

    router = router_with(interleaving(coverage=0.0, forced={"treatment": ["user-1"]}))
    change = _change(router, router)
    assert (change.kept, change.switched, change.left, change.entered) == (1, 0, 0, 0)
