"""Router behaviour: payloads, exposure rule, forced users, holdouts, windows, and agreement with the
reference evaluator and with the vectorised path."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from experiment_router import Router
from experiment_router.evaluation import EvalContext, run_experiment
from tests.experiment_router.helpers import EXAMPLES, base_config, experiment

TWO_LAYERS = EXAMPLES / "two_layers.yaml"


def test_two_layer_example_gives_each_stage_its_payload() -> None:
    router = Router.from_file(TWO_LAYERS)
    assignments = router.assign("user-1")
    by_key = {a.experiment_key: a for a in assignments}
    assert set(by_key) == {"retrieval-ssmtl", "ranking-mmoe-dml"}
    ranking = by_key["ranking-mmoe-dml"]
    assert ranking.stage == "ranking" and ranking.layer == "ranking"
    assert ranking.payload.model_name in {"mmoe", "mmoe+dml"}
    assert dict(ranking.payload.task_weights) == {"click": 1.0, "rating": 0.1}
    payloads = router.payloads(assignments)
    assert payloads["retrieval"].model_name in {"ssmtl-retrieval-only", "ssmtl"}
    assert payloads["retrieval"].task_weights == {}
    assert router.model_refs() == {
        ("retrieval", "ssmtl-retrieval-only", "1"),
        ("retrieval", "ssmtl", "1"),
        ("ranking", "mmoe", "1"),
        ("ranking", "mmoe+dml", "1"),
    }
    assert router.default_for("ranking").model_name == "mmoe"


def test_should_log_only_when_in_experiment_by_hash() -> None:
    router = Router.from_file(TWO_LAYERS)
    seen = {"in": 0, "out": 0}
    for i in range(2000):
        for a in router.assign(f"user-{i}"):
            assert a.should_log == a.in_experiment
            seen["in" if a.in_experiment else "out"] += 1
            if not a.in_experiment:
                assert a.payload == router.default_for(a.stage) and a.variant_key is None
    assert seen["in"] and seen["out"]  # the 2% global holdout puts some users outside


def test_forced_users_get_their_variant_without_exposure() -> None:
    router = Router.from_file(TWO_LAYERS)
    forced = next(a for a in router.assign("qa-alice") if a.experiment_key == "retrieval-ssmtl")
    assert forced.in_experiment and forced.variant_key == "treatment" and not forced.should_log
    assert "forced" in forced.reason


def test_condition_with_saved_group_excludes_qa_team() -> None:
    router = Router.from_file(TWO_LAYERS)
    ranking = next(a for a in router.assign("qa-bob") if a.experiment_key == "ranking-mmoe-dml")
    assert not ranking.in_experiment and "not targeted" in ranking.reason


def test_global_holdout_excludes_users_from_every_experiment() -> None:
    router = Router.from_file(TWO_LAYERS)
    held = [f"user-{i}" for i in range(3000) if router.in_global_holdout(f"user-{i}")]
    assert 20 < len(held) < 110  # 2% of 3000 = 60
    for user in held:
        assert all(not a.in_experiment and "global holdout" in a.reason for a in router.assign(user))


def test_draft_stopped_and_time_windows() -> None:
    data = base_config()
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    data["experiments"] = [
        experiment("draft", status="draft", layer={"name": "r", "range": [0, 0.2]}),
        experiment("stopped", status="stopped", layer={"name": "r", "range": [0.2, 0.4]}),
        experiment(
            "window", start=start.isoformat(), end=end.isoformat(), layer={"name": "r", "range": [0, 1]}
        ),
    ]
    router = Router.from_dict(data)
    before, during, after = start.timestamp() - 1, start.timestamp() + 10, end.timestamp()
    reasons = {a.experiment_key: a.reason for a in router.assign("u", now=before)}
    assert reasons == {"draft": "draft", "stopped": "stopped", "window": "not started yet"}
    assert next(a for a in router.assign("u", now=after) if a.experiment_key == "window").reason == "ended"
    inside = [
        next(a for a in router.assign(f"u{i}", now=during) if a.experiment_key == "window") for i in range(50)
    ]
    assert all(a.in_experiment for a in inside)


def test_holdout_group_applies_only_to_its_experiments() -> None:
    data = base_config()
    data["holdout_groups"] = {"q4": {"coverage": 0.5}}
    data["experiments"] = [experiment("with", holdout="q4"), experiment("without", stage="retrieval")]
    router = Router.from_dict(data)
    results = [{a.experiment_key: a for a in router.assign(f"user-{i}")} for i in range(400)]
    held = sum("holdout group 'q4'" in r["with"].reason for r in results)
    assert 150 < held < 250
    assert all(r["without"].in_experiment for r in results)


def test_missing_hash_attribute_and_fallback() -> None:
    data = base_config()
    data["experiments"] = [experiment("by-device", hash_attribute="device_id")]
    router = Router.from_dict(data)
    (a,) = router.assign("u1")
    assert not a.in_experiment and "no value for hash attribute 'device_id'" in a.reason
    (b,) = router.assign("u1", {"device_id": "d-9"})
    assert b.in_experiment


def test_unknown_hash_attribute_value_types_are_stringified() -> None:
    data = base_config()
    data["experiments"] = [experiment("by-number", hash_attribute="account")]
    router = Router.from_dict(data)
    assert router.assign("u", {"account": 123}) == router.assign("v", {"account": "123"})


@pytest.mark.parametrize("version", [1, 2])
def test_router_agrees_with_reference_evaluator(version: int) -> None:
    data = base_config()
    data["saved_groups"] = {"vip": ["user-3", "user-8"]}
    data["experiments"] = [
        experiment(
            "ranked",
            hash_version=version,
            seed="s-1",
            coverage=0.6,
            layer={"name": "ranking", "range": [0.1, 0.8]},
            condition={"$or": [{"country": {"$in": ["NL", "DE"]}}, {"user_id": {"$inGroup": "vip"}}]},
            variations=[
                {"key": "a", "weight": 0.2, "payload": {"model_name": "m", "model_version": "1"}},
                {"key": "b", "weight": 0.3, "payload": {"model_name": "m", "model_version": "2"}},
                {"key": "c", "weight": 0.5, "payload": {"model_name": "m", "model_version": "3"}},
            ],
        )
    ]
    router = Router.from_dict(data)
    spec = router._experiments[0].spec
    for i in range(1500):
        attrs = {"country": ["NL", "US", "DE"][i % 3]}
        (mine,) = router.assign(f"user-{i}", attrs)
        ref = run_experiment(
            spec,
            EvalContext(
                attributes={**attrs, "user_id": f"user-{i}"}, saved_groups={"vip": ["user-3", "user-8"]}
            ),
        )
        assert (mine.in_experiment, mine.should_log) == (ref.in_experiment, ref.hash_used)
        if mine.in_experiment:
            assert mine.variation_id == ref.variation_id


def test_vectorised_assignment_matches_per_user_assignment() -> None:
    router = Router.from_file(TWO_LAYERS)
    ids = [f"user-{i}" for i in range(3000)] + ["qa-alice", "qa-bob", "", "ü-ñ", "emoji-😀"]
    bulk = router.assign_many(ids)
    for i, user in enumerate(ids):
        for a in router.assign(user):
            assert bulk[a.experiment_key][i] == a.variation_id, (user, a)
    assert set(np.unique(bulk["ranking-mmoe-dml"])) == {-1, 0, 1}


def test_times_without_zone_are_utc() -> None:
    data = base_config()
    data["experiments"] = [experiment("naive", start="2026-03-01T00:00:00")]
    router = Router.from_dict(data)
    start = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    assert router.assign("u", now=start - 1)[0].reason == "not started yet"
    assert router.assign("u", now=start)[0].in_experiment


def test_holdout_groups_are_seeded_by_their_names_and_payloads_are_read_only() -> None:
    data = base_config()
    data["holdout_groups"] = {"g1": {"coverage": 0.5}, "g2": {"coverage": 0.5}}
    data["experiments"] = [
        experiment("one", holdout="g1"),
        experiment("two", stage="retrieval", holdout="g2"),
    ]
    router = Router.from_dict(data)
    results = [router.assign(f"user-{i}") for i in range(400)]
    disagree = sum(r[0].in_experiment != r[1].in_experiment for r in results)
    assert 130 < disagree < 270  # independent halves disagree about half of the time
    with pytest.raises(TypeError):
        router.default_for("ranking").task_weights["click"] = 5.0  # type: ignore[index]


def test_hash_attributes_follow_javascript_truthiness_and_number_printing() -> None:
    data = base_config()
    data["experiments"] = [experiment("by-account", hash_attribute="account")]
    router = Router.from_dict(data)
    for falsy in (0, 0.0, False, "", None):
        (a,) = router.assign("u", {"account": falsy})
        assert not a.in_experiment and "no value for hash attribute 'account'" in a.reason, falsy
    assert router.assign("u", {"account": 2273199612178534537}) == router.assign(
        "u", {"account": "2273199612178534700"}
    )
    assert router.assign("u", {"account": 1e21}) == router.assign("u", {"account": "1e+21"})
    assert router.assign("u", {"account": True}) == router.assign("u", {"account": "true"})


def test_a_user_forced_into_one_experiment_is_outside_the_others_of_its_stage() -> None:
    """Forced users were also bucketed into the layer's other experiments: served the forced payload (the
    first in file order), they logged an exposure for the other one's variant, which they never saw."""
    data = base_config()
    qa = [f"qa-{i}" for i in range(40)]
    data["experiments"] = [
        experiment("a", layer={"name": "ranking", "range": [0, 0.5]}, forced={"treatment": qa}),
        experiment("b", layer={"name": "ranking", "range": [0.5, 1]}),
        experiment("draft", status="draft", layer={"name": "ranking", "range": [0, 1]}),
        experiment("retrieval", stage="retrieval"),
    ]
    router = Router.from_dict(data)
    bulk = router.assign_many(qa)
    for i, user in enumerate(qa):
        by_key = {a.experiment_key: a for a in router.assign(user)}
        assert by_key["a"].variant_key == "treatment" and not by_key["a"].should_log
        assert not by_key["b"].in_experiment and not by_key["b"].should_log
        assert by_key["b"].reason == "forced into experiment 'a' of stage 'ranking' (QA allowlist)"
        assert router.payloads(list(by_key.values()))["ranking"].model_version == "2"
        assert by_key["retrieval"].in_experiment  # another stage: bucketed as usual
        assert [bulk[key][i] for key in by_key] == [a.variation_id for a in by_key.values()]


def test_model_refs_name_the_models_forced_users_of_a_draft_are_served() -> None:
    """A QA user forced into a draft got a model the server never loaded (model_refs listed running ones)."""
    data = base_config()
    data["experiments"] = [
        experiment("draft", status="draft", forced={"treatment": ["qa-1"]}),
        experiment("stopped", stage="retrieval", status="stopped"),
    ]
    data["experiments"][0]["variations"][1]["payload"]["model_name"] = "new-ranker"
    router = Router.from_dict(data)
    served = router.assign("qa-1")[0].payload
    assert (served.model_name, served.model_version) == ("new-ranker", "2")
    assert router.model_refs() == {
        ("retrieval", "ssmtl-retrieval-only", "1"),
        ("ranking", "mmoe", "1"),
        ("ranking", "new-ranker", "2"),
    }
