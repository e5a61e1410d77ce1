"""Sticky bucketing in the Router: assignments survive re-weighting, reset on a bucket version bump,
and an old version below min_bucket_version blocks re-enrolment."""

from __future__ import annotations

from experiment_router import InMemoryStickyBucketStore, Router
from tests.experiment_router.helpers import base_config, experiment

USERS = [f"user-{i}" for i in range(300)]


def _router(store: InMemoryStickyBucketStore, weights: tuple[float, float], **fields) -> Router:
    data = base_config()
    exp = experiment("sticky-exp", **fields)
    for var, w in zip(exp["variations"], weights, strict=True):
        var["weight"] = w
    data["experiments"] = [exp]
    return Router.from_dict(data, sticky_store=store)


def _variants(router: Router) -> dict[str, str | None]:
    return {u: router.assign(u)[0].variant_key for u in USERS}


def test_reweighting_keeps_sticky_users_in_place() -> None:
    store = InMemoryStickyBucketStore()
    first = _variants(_router(store, (0.5, 0.5)))
    assert set(first.values()) == {"control", "treatment"}
    second = _variants(_router(store, (0.1, 0.9)))
    assert second == first  # without the store, ~40% of users would move
    stateless = _variants(_router(InMemoryStickyBucketStore(), (0.1, 0.9)))
    assert sum(stateless[u] != first[u] for u in USERS) > 60
    assert "sticky bucket" in _router(store, (0.1, 0.9)).assign(USERS[0])[0].reason
    doc = store.get("user_id", USERS[0])
    assert doc is not None and doc["assignments"] == {"sticky-exp__0": first[USERS[0]]}


def test_bucket_version_bump_re_randomises() -> None:
    store = InMemoryStickyBucketStore()
    first = _variants(_router(store, (0.5, 0.5)))
    bumped = _variants(_router(store, (0.1, 0.9), bucket_version=1))
    assert sum(bumped[u] != first[u] for u in USERS) > 60


def test_min_bucket_version_blocks_users_of_older_versions() -> None:
    store = InMemoryStickyBucketStore()
    _variants(_router(store, (0.5, 0.5)))
    router = _router(store, (0.5, 0.5), bucket_version=1, min_bucket_version=1)
    (a,) = router.assign(USERS[0])
    assert not a.in_experiment and not a.should_log and "blocks" in a.reason
    (fresh,) = router.assign("never-seen-user")
    assert fresh.in_experiment


def test_experiment_can_opt_out_of_sticky_bucketing() -> None:
    store = InMemoryStickyBucketStore()
    _variants(_router(store, (0.5, 0.5), sticky=False))
    assert store.snapshot() == {}


def test_fallback_attribute_is_used_with_a_store() -> None:
    store = InMemoryStickyBucketStore()
    data = base_config()
    data["experiments"] = [experiment("fb", hash_attribute="account_id", fallback_attribute="user_id")]
    (a,) = Router.from_dict(data, sticky_store=store).assign("anon-1")
    assert a.in_experiment
    assert store.get("user_id", "anon-1") is not None
