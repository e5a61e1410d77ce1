"""Layers: independent across layers (chi-square on 100k users), exclusive within a layer, stable on ramp-up."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2_contingency

from experiment_router import Router
from tests.experiment_router.helpers import base_config, experiment

USERS = [f"user-{i}" for i in range(100_000)]


def test_two_layers_are_statistically_independent() -> None:
    data = base_config()
    data["experiments"] = [
        experiment("retrieval-exp", stage="retrieval", layer={"name": "retrieval", "range": [0, 1]}),
        experiment("ranking-exp", stage="ranking", layer={"name": "ranking", "range": [0, 1]}),
    ]
    bulk = Router.from_dict(data).assign_many(USERS)
    a, b = bulk["retrieval-exp"], bulk["ranking-exp"]
    assert (a >= 0).all() and (b >= 0).all()
    table = np.zeros((2, 2), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    _, p_value, _, _ = chi2_contingency(table)
    assert p_value > 0.001, table  # uncorrelated: a user's retrieval arm says nothing about the ranking arm
    assert abs(table.sum(axis=1)[0] / len(USERS) - 0.5) < 0.01


def test_same_seed_layers_would_fail_the_independence_check() -> None:
    """The test above can fail: two experiments sharing a seed and layer slice are perfectly correlated."""
    data = base_config()
    data["experiments"] = [
        experiment("retrieval-exp", stage="retrieval", seed="shared"),
        experiment("ranking-exp", stage="ranking", seed="shared"),
    ]
    bulk = Router.from_dict(data).assign_many(USERS[:20_000])
    table = np.zeros((2, 2), dtype=np.int64)
    np.add.at(table, (bulk["retrieval-exp"], bulk["ranking-exp"]), 1)
    assert chi2_contingency(table)[1] < 1e-6


def test_experiments_in_one_layer_are_mutually_exclusive() -> None:
    data = base_config()
    data["experiments"] = [
        experiment("first", layer={"name": "ranking", "range": [0.0, 0.3]}),
        experiment("second", layer={"name": "ranking", "range": [0.3, 0.7]}),
        experiment("third", layer={"name": "ranking", "range": [0.7, 1.0]}),
    ]
    bulk = Router.from_dict(data).assign_many(USERS[:30_000])
    inside = np.stack([bulk[k] >= 0 for k in ("first", "second", "third")])
    assert (inside.sum(axis=0) == 1).all()  # every user in exactly one experiment of the layer
    shares = inside.mean(axis=1)
    assert np.allclose(shares, [0.3, 0.4, 0.3], atol=0.02)


@settings(max_examples=25, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=20), min_size=2, max_size=4),
    coverage=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=2, max_size=2).map(sorted),
)
def test_raising_coverage_in_a_config_never_moves_a_bucketed_user(
    weights: list[int], coverage: list[float]
) -> None:
    def router(cov: float) -> Router:
        data = base_config()
        exp = experiment("ramp", coverage=cov, layer={"name": "ranking", "range": [0.0, 0.6]})
        exp["variations"] = [
            {
                "key": f"v{i}",
                "weight": w / sum(weights),
                "payload": {"model_name": "mmoe", "model_version": str(i)},
            }
            for i, w in enumerate(weights)
        ]
        data["experiments"] = [exp]
        return Router.from_dict(data)

    before = router(coverage[0]).assign_many(USERS[:2000])["ramp"]
    after = router(coverage[1]).assign_many(USERS[:2000])["ramp"]
    bucketed = before >= 0
    assert (after[bucketed] == before[bucketed]).all()
    assert (after >= 0).sum() >= bucketed.sum()


def test_extending_an_explicit_variation_range_in_a_config_keeps_users() -> None:
    def router(treatment_end: float) -> Router:
        data = base_config()
        exp = experiment("ranged")
        exp["variations"][0]["range"] = [0.0, 0.2]
        exp["variations"][1]["range"] = [0.5, treatment_end]
        data["experiments"] = [exp]
        return Router.from_dict(data)

    before = router(0.6).assign_many(USERS[:5000])["ranged"]
    after = router(0.9).assign_many(USERS[:5000])["ranged"]
    bucketed = before >= 0
    assert (after[bucketed] == before[bucketed]).all()
    assert np.isclose((before == 1).mean(), 0.1, atol=0.02) and np.isclose(
        (after == 1).mean(), 0.4, atol=0.03
    )
