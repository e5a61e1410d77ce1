"""Interleaving credit in SQL (``analytics.interleaving_sql``): DuckDB, ClickHouse (chDB) and the in-memory store give
exactly the counts and statistics of the reference ``user_preferences`` on randomised logs, at every cut.

The logs hold what real traffic brings: exposures redelivered, requests retried (logged again later, sometimes with
another list: the first one counts), double clicks, clicks on items not shown, on another user's request, on
requests that were not interleaved or without a request, other outcome names on shown items, users without
clicks, two interleaving experiments sharing users, and an arm whose model changed while the experiment ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from analytics import interleaving_sql as isql
from analytics.analysis_window import ALL_TIME, AnalysisWindow
from analytics.consumer.processor import decode_into
from analytics.events.messages import (
    encode_exposure,
    encode_outcome,
    frame_batch,
    make_exposure,
    make_outcome,
)
from analytics.interleaving import Arm, Click, InterleavedExposure, ShownArms, arm_pairs, preference_counts_at
from analytics.stats.interleaving import InterleavingConfig, PreferenceCounts, analyze_interleaving
from analytics.store import (
    DuckDBEventStore,
    EventStore,
    ExposureColumns,
    ExposureRow,
    MemoryEventStore,
    OutcomeColumns,
    OutcomeRow,
    open_store,
)
from analytics.store.base import InterleavedColumns, InterleavedRow, ItemOutcomeColumns, ItemOutcomeRow

START = 1_790_000_000_000
ARMS = {
    "il-a": (("control", "mmoe", "1"), ("treatment", "mmoe+dml", "1")),
    "il-b": (("x", "m", "1"), ("y", "m", "2")),
}


def random_log(seed: int) -> tuple[list[InterleavedRow], list[ItemOutcomeRow]]:
    """Interleaved exposures of two experiments and item outcomes (clicks and impressions), shuffled."""
    rng = np.random.default_rng(seed)
    exposures: list[InterleavedRow] = []
    outcomes: list[ItemOutcomeRow] = []
    for experiment, (arm_a, arm_b) in ARMS.items():
        for u in rng.permutation(300)[:220]:
            user = f"user-{u:04d}"
            for r in range(int(rng.integers(1, 4))):
                request = f"{user}-r{r}" if experiment == "il-a" or rng.random() < 0.5 else f"{user}-b{r}"
                ts = START + int(rng.integers(0, 3_600_000))
                items = rng.choice(np.arange(0, 60), 8, replace=False)  # item 0 included: a valid id
                teams = rng.integers(0, 2, 8)
                changed = experiment == "il-a" and ts > START + 3_000_000  # a new version of B late on
                b = (arm_b[0], arm_b[1], "2") if changed else arm_b
                row = InterleavedRow(f"{experiment}-{request}", experiment, user, request, ts, items.tolist(),
                                     teams.tolist(), *arm_a, *b)  # fmt: skip
                exposures.append(row)
                if (
                    rng.random() < 0.2
                ):  # a retry, logged later (a different list once in a while: the first wins)
                    again = rng.permutation(teams).tolist() if rng.random() < 0.3 else row.teams
                    exposures.append(row._replace(event_id=row.event_id + "-retry",
                                                  event_time_ms=ts + int(rng.integers(0, 5_000)), teams=again))  # fmt: skip
                if rng.random() < 0.15:  # a tie on time: the smaller event id wins
                    exposures.append(
                        row._replace(event_id=row.event_id + "-0", teams=rng.permutation(teams).tolist())
                    )
                clicked = rng.random(8) < 0.12
                for k, item in enumerate(items[clicked]):
                    at = ts + int(
                        rng.integers(-2_000, 600_000)
                    )  # a backend clock may run behind the ranker's
                    click = ItemOutcomeRow(f"{request}-c{k}", user, request, int(item), "click", at)
                    outcomes.append(click)
                    if rng.random() < 0.2:  # a double click: two events, one credit
                        outcomes.append(
                            click._replace(event_id=click.event_id + "-2", event_time_ms=at + 300)
                        )
                for k, item in enumerate(items[:3]):
                    outcomes.append(
                        ItemOutcomeRow(f"{request}-i{k}", user, request, int(item), "impression", ts + 5)
                    )
                if rng.random() < 0.1:
                    outcomes.append(
                        ItemOutcomeRow(f"{request}-x", user, request, 99, "click", ts + 50)
                    )  # not shown
                if rng.random() < 0.1:  # somebody else's request
                    outcomes.append(
                        ItemOutcomeRow(f"{request}-o", "user-9999", request, int(items[0]), "click", ts + 9)
                    )
    for u in range(40):  # requests that were never interleaved, and clicks without a request
        user = f"user-{u:04d}"
        outcomes.append(ItemOutcomeRow(f"{user}-plain", user, f"{user}-ab", 5, "click", START + 100))
        outcomes.append(ItemOutcomeRow(f"{user}-none", user, "", 0, "click", START + 100))
    exposures += [exposures[i] for i in rng.integers(0, len(exposures), 50)]  # redelivered copies
    outcomes += [outcomes[i] for i in rng.integers(0, len(outcomes), 150)]
    return [exposures[i] for i in rng.permutation(len(exposures))], [
        outcomes[i] for i in rng.permutation(len(outcomes))
    ]


def reference(
    exposures: list[InterleavedRow], outcomes: list[ItemOutcomeRow], experiment: str, cuts: list
) -> list:
    shown = [InterleavedExposure(e.user_id, e.request_id, e.item_ids, e.teams, e.event_time_ms, e.event_id)
             for e in exposures if e.experiment_key == experiment]  # fmt: skip
    clicks = [
        Click(o.user_id, o.request_id, o.item_id, o.event_time_ms) for o in outcomes if o.metric == "click"
    ]
    return preference_counts_at(shown, clicks, cuts)


def apply_in_parts(
    store: EventStore, exposures: list[InterleavedRow], outcomes: list[ItemOutcomeRow], parts: int
) -> None:
    """As the consumer does: each interleaved exposure also as an exposure of variant "interleaved"."""
    for k in range(parts):
        batch = exposures[k::parts]
        store.apply(
            [
                ExposureRow(e.event_id, e.experiment_key, "interleaved", e.user_id, e.event_time_ms)
                for e in batch
            ],
            [OutcomeRow(o.event_id, o.user_id, o.metric, o.event_time_ms, 1.0) for o in outcomes[k::parts]],
            {},
            interleaved=batch,
            item_outcomes=outcomes[k::parts],
        )


@pytest.fixture(params=["duckdb", "chdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "duckdb":
        made: EventStore = DuckDBEventStore(tmp_path / "s", compact_parts=3)  # compacts in the background
    elif request.param == "chdb":
        made = open_store("chdb://")
    else:
        made = MemoryEventStore()
    yield made
    made.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_every_store_credits_clicks_exactly_as_the_reference(store: EventStore, seed: int) -> None:
    exposures, outcomes = random_log(seed)
    apply_in_parts(store, exposures, outcomes, parts=5)
    times = sorted(e.event_time_ms for e in exposures)
    bounded = [times[len(times) * k // 5] for k in range(1, 5)]
    for experiment in ARMS:
        for cuts in ([None], [*bounded, None], bounded, [START - 1, None]):
            expected = reference(exposures, outcomes, experiment, cuts)
            found = store.preference_counts(experiment, cuts)
            assert found == expected, (experiment, cuts)
            for config in (InterleavingConfig(), InterleavingConfig(sequential=True)):
                assert [analyze_interleaving(c, config) for c in found] == [
                    analyze_interleaving(c, config) for c in expected
                ]
        assert store.preference_counts(experiment, [None])[0].wins_a > 0  # the log is not trivially empty
    assert store.variant_counts("il-a") == {
        "interleaved": len({e.user_id for e in exposures if e.experiment_key == "il-a"})
    }


def test_duckdb_compaction_drops_copies_and_keeps_the_counts(tmp_path: Path) -> None:
    exposures, outcomes = random_log(4)
    with DuckDBEventStore(tmp_path / "s", compact_parts=0) as store:
        apply_in_parts(store, exposures, outcomes, parts=4)
        apply_in_parts(store, exposures[:100], outcomes[:100], parts=1)  # redelivered in a later commit
        before = [store.preference_counts(e, [START + 1_800_000, None]) for e in ARMS]
        assert store.compact(everything=True)
        (part,) = store._visible()
        assert part.interleaving == {"interleaved", "item_outcomes"}
        assert store.db.execute(f"SELECT count(*) FROM '{part.file('interleaved')}'").fetchone()[0] == len(
            {(*e[:5], tuple(e.item_ids), tuple(e.teams), *e[7:]) for e in exposures}
        )
        assert store.db.execute(f"SELECT count(*) FROM '{part.file('item_outcomes')}'").fetchone()[0] == len(
            set(outcomes)
        )
        assert [store.preference_counts(e, [START + 1_800_000, None]) for e in ARMS] == before
        assert before[0] == reference(exposures, outcomes, "il-a", [START + 1_800_000, None])


def test_arms_are_counted_per_pair_of_models(store: EventStore) -> None:
    exposures, outcomes = random_log(3)
    apply_in_parts(store, exposures, outcomes, parts=4)
    seen = store.interleaving_arms("il-a")
    late = [e for e in exposures if e.experiment_key == "il-a" and e.arm_b_version == "2"]
    early = [e for e in exposures if e.experiment_key == "il-a" and e.arm_b_version == "1"]
    assert [(s.a, s.b) for s in seen] == [
        (Arm("control", "mmoe", "1"), Arm("treatment", "mmoe+dml", "1")),
        (Arm("control", "mmoe", "1"), Arm("treatment", "mmoe+dml", "2")),
    ]
    assert [s.exposures for s in seen] == [len({e.event_id for e in early}), len({e.event_id for e in late})]
    assert seen[1].first_ms == min(e.event_time_ms for e in late)
    assert seen[0].last_ms == max(e.event_time_ms for e in early)
    assert store.interleaving_arms("not-interleaved") == []


def test_arm_pairs_of_a_window_are_the_references(store: EventStore) -> None:
    """Rule 6 on every store: the arm pairs of the exposures rule 5 keeps in a window (before the end, of
    users first shown a list at or after the start), equal to ``arm_pairs``, order included; with copies of
    events applied again later (a client's retry with the event's id), some across a window's end."""
    exposures, outcomes = random_log(5)
    copies = [e._replace(event_time_ms=e.event_time_ms + 400_000) for e in exposures[:60]]
    apply_in_parts(store, exposures + copies, outcomes, parts=3)
    change = START + 3_000_000  # B's new version from here on in "il-a"
    windows = [
        ALL_TIME,
        AnalysisWindow(START + 1_000_000, change + 200_000),
        AnalysisWindow(None, change),
        AnalysisWindow(change, None),
        AnalysisWindow(START + 2_000_000, START + 2_500_000),
        AnalysisWindow(START + 10_000_000, None),  # after every list
    ]
    found: dict[str, list] = {}
    for experiment in ARMS:
        shown = [
            ShownArms(Arm(*e[7:10]), Arm(*e[10:13]), e.user_id, e.event_id, e.event_time_ms)
            for e in exposures + copies
            if e.experiment_key == experiment
        ]
        found[experiment] = [store.interleaving_arms(experiment, window=w) for w in windows]
        assert found[experiment] == [arm_pairs(shown, w) for w in windows], experiment
    pairs = [[(s.a, s.b, s.exposures) for s in seen] for seen in found["il-a"]]
    assert [len(p) for p in pairs] == [2, 2, 1, 1, 1, 0] and len({tuple(p) for p in pairs}) == len(windows)
    # before the change only B's first version; users first shown a list after it saw only the second
    before, after = Arm("treatment", "mmoe+dml", "1"), Arm("treatment", "mmoe+dml", "2")
    assert (pairs[2][0][1], pairs[3][0][1]) == (before, after)


def test_an_experiment_without_clicks_or_exposures(store: EventStore) -> None:
    assert store.preference_counts("il-a", [5, None]) == [PreferenceCounts(0, 0, 0, 0, 0.0, 0.0)] * 2
    store.apply([ExposureRow("e", "il-a", "interleaved", "u", 10)], [], {},
                interleaved=[InterleavedRow("e", "il-a", "u", "r", 10, [1, 2], [0, 1], *ARMS["il-a"][0], *ARMS["il-a"][1])])  # fmt: skip
    assert store.preference_counts("il-a", [5, None]) == [
        PreferenceCounts(0, 0, 0, 0, 0.0, 0.0),
        PreferenceCounts(1, 0, 0, 0, 0.0, 0.0),
    ]
    assert store.interleaving_arms("il-a")[0].exposures == 1


def test_a_click_without_an_item_credits_no_arm(store: EventStore) -> None:
    """A click that names its request but no item was stored as a click on item 0 (proto3 sent no item and
    item 0 alike), so the arm that showed item 0 in that request got the credit: here B, making a tie of a
    user who prefers A. Item 0 is a valid id: a click on it is credited as any other."""
    (arm_a, arm_b) = ARMS["il-a"]
    shown = [
        make_exposure("u1", "il-a", "interleaved", request_id=request, item_ids=[0, 7], teams=teams,
                      arms=(arm_a, arm_b), event_time_ms=10)
        for request, teams in (("r1", [1, 0]), ("r2", [0, 1]))
    ]  # fmt: skip
    clicks = [
        make_outcome("u1", "click", request_id="r1", event_time_ms=20),  # no item: credits nobody
        make_outcome("u1", "click", request_id="r2", item_id=0, event_time_ms=20),  # item 0, from A
    ]
    columns = ExposureColumns(), OutcomeColumns(), InterleavedColumns(), ItemOutcomeColumns()
    value = frame_batch([*map(encode_exposure, shown), *map(encode_outcome, clicks)])
    assert decode_into(value, *columns) == 0
    exposures, outcomes, interleaved, item_outcomes = columns
    store.apply(exposures, outcomes, {}, interleaved=interleaved, item_outcomes=item_outcomes)
    assert store.preference_counts("il-a", [None]) == [PreferenceCounts(1, 1, 0, 0, -1.0, 1.0)]


def test_the_query_compiles_for_both_engines_and_checks_cuts() -> None:
    relations = isql.InterleavingRelations(
        isql.exp.to_table("interleaved"), isql.exp.to_table("item_outcomes")
    )
    for dialect, position in (("duckdb", "list_position"), ("clickhouse", "indexof")):
        compiled = isql.compile_preferences(relations, "x", [1, None], "click", dialect)
        assert position in compiled.sql.lower()
    with pytest.raises(ValueError, match="ascend"):
        isql.compile_preferences(relations, "x", [None, 1], "click", "duckdb")
    with pytest.raises(ValueError, match="at least one"):
        isql.compile_preferences(relations, "x", [], "click", "duckdb")
