"""EventStore semantics, checked on both implementations, plus SQLite-only durability and order independence."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.store import (
    DuckDBEventStore,
    EventStore,
    ExposureRow,
    MemoryEventStore,
    OutcomeRow,
    TopicPartition,
)
from analytics.store.exceptions import OffsetBackwards

TP = TopicPartition("mtrank.outcomes", 0)


@pytest.fixture(params=["sqlite", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    stores: list[EventStore] = []

    def make(window: int | None = None) -> EventStore:
        if request.param == "sqlite":
            store: EventStore = DuckDBEventStore(
                tmp_path / f"s{len(stores)}.db", attribution_window_ms=window
            )
        else:
            store = MemoryEventStore(attribution_window_ms=window)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def test_first_exposure_wins_and_attribution_window(make_store) -> None:
    store = make_store(window=100)
    exposures = [
        ExposureRow("e2", "exp", "treatment", "u1", 50),  # arrives first but is not the first exposure
        ExposureRow("e1", "exp", "control", "u1", 10),
        ExposureRow("e3", "exp", "treatment", "u2", 20),
        ExposureRow("e4", "other", "a", "u1", 1000),
    ]
    outcomes = [
        OutcomeRow("o1", "u1", "click", 5, 1.0),  # before u1's first exposure: pre-exposure value
        OutcomeRow("o2", "u1", "click", 10, 1.0),  # at the exposure: attributed
        OutcomeRow("o3", "u1", "click", 109, 2.0),  # last attributed millisecond
        OutcomeRow("o4", "u1", "click", 110, 4.0),  # outside the window
        OutcomeRow("o5", "u1", "watch", 20, 30.0),
    ]
    store.apply(exposures, outcomes, {TP: 7})
    assert store.experiments() == ["exp", "other"]
    assert store.variant_counts("exp") == {"control": 1, "treatment": 1}
    assert list(store.user_metric_values("exp", "click")) == [
        ("control", 3.0, 2, 1.0),
        ("treatment", 0.0, 0, 0.0),
    ]
    assert list(store.user_metric_values("exp", "watch")) == [
        ("control", 30.0, 1, 0.0),
        ("treatment", 0.0, 0, 0.0),
    ]
    # u1's first exposure to "other" is at 1000: all clicks are pre-exposure there
    assert list(store.user_metric_values("other", "click")) == [("a", 0.0, 0, 8.0)]
    # as of t=15: u1's outcomes up to 15 only; u2 (first exposed at 20) not yet in
    assert list(store.user_metric_values("exp", "click", until_ms=15)) == [("control", 1.0, 1, 1.0)]
    assert store.exposure_timeline("exp", 20) == [(0, "control", 1), (20, "treatment", 1)]
    assert store.time_range("exp") == (10, 50)
    assert store.time_range("missing") == (0, 0)
    assert store.metrics() == ["click", "watch"]
    assert store.offsets() == {TP: 7}


def test_no_window_attributes_everything_after_exposure(make_store) -> None:
    store = make_store(window=None)
    store.apply([ExposureRow("e", "exp", "a", "u", 0)], [OutcomeRow("o", "u", "m", 10**12, 1.5)], {})
    assert list(store.user_metric_values("exp", "m")) == [("a", 1.5, 1, 0.0)]


def test_duplicate_events_count_once(make_store) -> None:
    store = make_store()
    exposure = ExposureRow("e1", "exp", "a", "u1", 1)
    outcome = OutcomeRow("o1", "u1", "click", 2, 1.0)
    store.apply([exposure, exposure], [outcome, outcome], {TP: 1})
    store.apply([exposure], [outcome], {TP: 2})  # redelivered in a later record
    assert store.counts() == {"exposed_users": 1, "outcomes": 1}
    assert list(store.user_metric_values("exp", "click")) == [("a", 1.0, 1, 0.0)]


def test_offsets_never_go_backwards_and_failed_apply_changes_nothing(make_store) -> None:
    store = make_store()
    store.apply([], [OutcomeRow("o1", "u1", "click", 2, 1.0)], {TP: 10})
    with pytest.raises(
        OffsetBackwards, match=r"mtrank.outcomes\[0\]: offset 9 is behind the applied offset 10"
    ):
        store.apply([ExposureRow("e1", "exp", "a", "u1", 1)], [], {TP: 9})
    assert store.experiments() == [] and store.offsets() == {TP: 10}


def test_sqlite_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with DuckDBEventStore(path) as store:
        store.apply([ExposureRow("e1", "exp", "a", "u1", 1)], [OutcomeRow("o1", "u1", "m", 2, 1.0)], {TP: 3})
    with DuckDBEventStore(path) as store:
        assert store.offsets() == {TP: 3}
        assert list(store.user_metric_values("exp", "m")) == [("a", 1.0, 1, 0.0)]


_exposure = st.builds(
    ExposureRow,
    st.integers(0, 30).map(lambda i: f"e{i}"),
    st.sampled_from(["x", "y"]),
    st.sampled_from(["control", "treatment"]),
    st.integers(0, 6).map(lambda i: f"u{i}"),
    st.integers(0, 200),
)
_outcome = st.builds(
    OutcomeRow,
    st.integers(0, 40).map(lambda i: f"o{i}"),
    st.integers(0, 6).map(lambda i: f"u{i}"),
    st.sampled_from(["click", "watch"]),
    st.integers(0, 300),
    st.sampled_from([1.0, 2.5]),
)


def _snapshot(store: EventStore) -> dict:
    return {
        (exp, metric): list(store.user_metric_values(exp, metric))
        for exp in ("x", "y")
        for metric in ("click", "watch")
    } | {
        exp: (store.variant_counts(exp), store.exposure_timeline(exp, 50), store.time_range(exp))
        for exp in "xy"
    }


@settings(max_examples=40, deadline=None)
@given(st.lists(_exposure, max_size=25), st.lists(_outcome, max_size=40), st.randoms(use_true_random=False))
def test_sqlite_matches_memory_in_any_arrival_order(
    tmp_path_factory, exposures, outcomes, rnd: random.Random
) -> None:
    # one identity per event id, as on the wire
    exposures = list({e.event_id: e for e in exposures}.values())
    outcomes = list({o.event_id: o for o in outcomes}.values())
    reference = MemoryEventStore(attribution_window_ms=60)
    reference.apply(exposures, outcomes, {})
    shuffled_e, shuffled_o = exposures * 2, outcomes * 2  # with duplicates
    rnd.shuffle(shuffled_e)
    rnd.shuffle(shuffled_o)
    with DuckDBEventStore(tmp_path_factory.mktemp("h") / "s.db", attribution_window_ms=60) as store:
        for i in range(0, max(len(shuffled_e), len(shuffled_o)), 7):
            store.apply(shuffled_e[i : i + 7], shuffled_o[i : i + 7], {TP: i})
        assert _snapshot(store) == _snapshot(reference)


def test_large_batches_with_duplicates(make_store) -> None:
    store = make_store(window=None)
    outcomes = [OutcomeRow(f"o{i}", f"u{i % 3}", "click", i, 1.0) for i in range(250)]
    store.apply(
        [ExposureRow(f"e{u}", "exp", "a", f"u{u}", 0) for u in range(3)], outcomes + outcomes[::2], {}
    )
    assert store.counts() == {"exposed_users": 3, "outcomes": 250}
    assert sorted(list(store.user_metric_values("exp", "click"))) == [("a", 83.0, 83, 0.0)] * 2 + [
        ("a", 84.0, 84, 0.0)
    ]
