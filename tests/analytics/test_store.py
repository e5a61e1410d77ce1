"""EventStore semantics on every implementation (DuckDB parts, ClickHouse via chDB, memory), plus the DuckDB store's
durability, compaction and readers in other processes, and order independence against the memory reference."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.kafka.broker import free_port
from analytics.metrics import AnalysisConfig
from analytics.report import experiment_summary
from analytics.store import (
    DuckDBEventStore,
    EventStore,
    ExposureRow,
    MemoryEventStore,
    OutcomeRow,
    StoreError,
    StoreUnreachable,
    TopicPartition,
    open_store,
)
from analytics.store.duckdb_store import MAX_ROLLUP_NAME_CHARS
from analytics.store.exceptions import OffsetBackwards
from proto.limits import MAX_NAME_BYTES
from tests.analytics.simulated_interleaving import simulate_interleaving

TP = TopicPartition("mtrank.outcomes", 0)


@pytest.fixture(params=["duckdb", "memory", "chdb"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    stores: list[EventStore] = []

    def make(window: int | None = None) -> EventStore:
        if request.param == "duckdb":
            store: EventStore = DuckDBEventStore(tmp_path / f"s{len(stores)}", attribution_window_ms=window)
        elif request.param == "chdb":
            store = open_store("chdb://", attribution_window_ms=window)
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


def test_the_attribution_window_ends_beyond_the_largest_time(make_store) -> None:
    """Any producer stamps its events: a first exposure within the attribution window of the largest 64-bit
    time made first exposure + window overflow, an error in DuckDB (the experiment's report failed) and a wrap
    in ClickHouse (the user's outcomes were not attributed)."""
    store = make_store(window=100)
    largest = 2**63 - 1
    store.apply(
        [ExposureRow("e1", "exp", "a", "u1", largest - 10), ExposureRow("e2", "exp", "b", "u2", 0)],
        [OutcomeRow("o1", "u1", "click", largest - 10, 1.0), OutcomeRow("o2", "u1", "click", largest, 2.0),
         OutcomeRow("o3", "u2", "click", 99, 4.0), OutcomeRow("o4", "u2", "click", 100, 8.0)],
        {TP: 1},
    )  # fmt: skip
    expected = [("a", 3.0, 2, 0.0), ("b", 4.0, 1, 0.0)]
    assert sorted(store.user_metric_values("exp", "click")) == expected
    if isinstance(store, DuckDBEventStore):  # the same through a compacted part's rollups
        assert store.compact(everything=True)
        assert sorted(store.user_metric_values("exp", "click")) == expected


def test_the_exposure_timeline_rounds_times_before_1970_down(make_store) -> None:
    """A bucket holds the first exposures of ``[start, start + bucket_ms)``, before 1970 too (producers stamp
    any time): SQL's integer division rounds towards zero, so those of -1500 and -500 went to the buckets
    starting at -1000 and 0; the product for the first bucket of the 64-bit range must not overflow either."""
    store = make_store()
    times = {"u1": -1500, "u2": -1000, "u3": -500, "u4": 0, "u5": 999, "u6": -(2**63)}
    store.apply([ExposureRow(f"e-{u}", "exp", "a", u, ts) for u, ts in times.items()], [], {TP: 1})
    expected = [(-9223372036854776000, "a", 1), (-2000, "a", 1), (-1000, "a", 2), (0, "a", 2)]
    assert store.exposure_timeline("exp", 1000) == expected


def test_duplicate_events_count_once(make_store) -> None:
    store = make_store()
    exposure = ExposureRow("e1", "exp", "a", "u1", 1)
    outcome = OutcomeRow("o1", "u1", "click", 2, 1.0)
    store.apply([exposure, exposure], [outcome, outcome], {TP: 1})
    store.apply([exposure], [outcome], {TP: 2})  # redelivered in a later record
    assert store.counts() == {"exposed_users": 1, "outcomes": 1}
    assert list(store.user_metric_values("exp", "click")) == [("a", 1.0, 1, 0.0)]


def test_a_retry_with_the_event_id_at_a_later_time_counts_once(make_store) -> None:
    """``OutcomeClient.report(..., event_id=...)`` retries "without double counting", but stamps the retry
    with the time it is sent: copies of one event (id, user, outcome name) count once, at their earliest time
    with their smallest value, whichever arrives first. They counted once per time (revenue doubled by one
    retry)."""
    store = make_store(window=100)
    first = OutcomeRow("o1", "u1", "purchase", 40, 9.5)
    retries = [first._replace(event_time_ms=45), first._replace(event_time_ms=140)]  # 140: after the window
    store.apply([ExposureRow("e1", "exp", "a", "u1", 30)], retries, {})
    copies = [OutcomeRow("o2", "u1", "purchase", 50, 3.0), OutcomeRow("o2", "u1", "purchase", 50, 2.0)]
    store.apply([], [first, *copies], {})
    assert store.counts() == {"exposed_users": 1, "outcomes": 2}
    assert list(store.user_metric_values("exp", "purchase")) == [("a", 11.5, 2, 0.0)]


def test_duckdb_a_retry_counts_once_before_and_after_compaction(tmp_path: Path) -> None:
    """A retry (the event's id, a later time) read against a compacted part was dropped, and counted beside
    the original when both were raw: the store's answer changed when it compacted."""
    exposures = [ExposureRow("e1", "exp", "a", "u1", 30), ExposureRow("e2", "exp", "b", "u2", 30)]
    original = [OutcomeRow("o1", "u1", "purchase", 40, 9.5), OutcomeRow("o2", "u2", "purchase", 40, 1.0)]
    retries = [original[0]._replace(event_time_ms=60), OutcomeRow("o3", "u2", "purchase", 70, 4.0)]
    reference = MemoryEventStore()
    compacted = DuckDBEventStore(tmp_path / "compacted", compact_parts=0)
    with DuckDBEventStore(tmp_path / "raw", compact_parts=0) as raw, compacted:
        for store in (reference, compacted, raw):
            store.apply(exposures, original, {})
        assert compacted.compact(everything=True)
        for store in (reference, compacted, raw):
            store.apply([], retries, {})
        expected = [("a", 9.5, 1, 0.0), ("b", 5.0, 2, 0.0)]
        for store in (reference, compacted, raw):
            assert list(store.user_metric_values("exp", "purchase")) == expected
            assert store.counts() == {"exposed_users": 2, "outcomes": 3}
        assert compacted.compact(everything=True)  # the tail merged into the compacted events: still once
        assert list(compacted.user_metric_values("exp", "purchase")) == expected


def test_offsets_never_go_backwards_and_failed_apply_changes_nothing(make_store) -> None:
    store = make_store()
    store.apply([], [OutcomeRow("o1", "u1", "click", 2, 1.0)], {TP: 10})
    with pytest.raises(
        OffsetBackwards, match=r"mtrank.outcomes\[0\]: offset 9 is behind the applied offset 10"
    ):
        store.apply([ExposureRow("e1", "exp", "a", "u1", 1)], [], {TP: 9})
    assert store.experiments() == [] and store.offsets() == {TP: 10}


HOSTILE_NAMES = (
    "x'); DROP TABLE outcomes; --",
    "back\\",
    "back\\'; DROP TABLE exposures; --",
    'a"b`c$$d',
    "é☃😀\u202e",
)


def test_names_from_events_are_data_in_every_query(make_store) -> None:
    """Experiment, variant, user and outcome names come from events any producer writes, and metric event
    names from the config: in SQL they are quoted literals (ClickHouse reads a backslash as an escape, DuckDB
    does not), so each store counts them as the in-memory reference does, and no table is dropped."""
    store = make_store(window=100)
    exposures = [ExposureRow(f"e{i}{u}", key, key if u else "control", f"{key}{u}", 10) for i, key in
                 enumerate(HOSTILE_NAMES) for u in range(2)]  # fmt: skip
    outcomes = [OutcomeRow(f"o{i}{j}", f"{key}1", name, 20, 1.0 + j) for i, key in enumerate(HOSTILE_NAMES)
                for j, name in enumerate(HOSTILE_NAMES)]  # fmt: skip
    store.apply(exposures, outcomes, {TP: 1})
    assert store.experiments() == sorted(HOSTILE_NAMES) and store.metrics() == sorted(HOSTILE_NAMES)
    for j, key in enumerate(HOSTILE_NAMES):
        assert store.variant_counts(key) == {"control": 1, key: 1}
        expected = [("control", 0.0, 0, 0.0), (key, 1.0 + j, 1, 0.0)]
        assert sorted(store.user_metric_values(key, key)) == sorted(expected)
    assert store.counts() == {"exposed_users": 2 * len(HOSTILE_NAMES), "outcomes": len(HOSTILE_NAMES) ** 2}


def test_experiment_keys_too_long_to_analyse_are_not_listed(make_store) -> None:
    """Experiment keys come from exposure events, which any producer writes. One exposure with a
    300,000-character key made every ClickHouse query of the dashboard's experiment list fail (max_query_size
    is 256 KiB): the list answered 500. Keys the contract admits (at most 256 bytes of UTF-8) are analysed,
    whatever they hold."""
    store = make_store()
    longest = "😀" * (MAX_NAME_BYTES // 4)
    keys = ["checkout", longest, longest + "x", "é" * MAX_NAME_BYTES, "x" * 300_000, "\x01"]
    store.apply([ExposureRow(f"e{i}", key, "a", f"u{i}", i) for i, key in enumerate(keys)], [], {TP: 1})
    assert store.experiments() == ["\x01", "checkout", longest]
    config = AnalysisConfig.model_validate(
        {"metrics": [{"name": "clicks", "type": "count", "event": "click"}]}
    )
    assert [experiment_summary(store, config, key).total_users for key in store.experiments()] == [1, 1, 1]


def test_every_experiments_counts_at_once_equal_each_experiments_counts(make_store) -> None:
    """The dashboard's list asked ``variant_counts`` and ``interleaving_arms`` once per experiment key (keys
    come from events any producer writes: 500 keys of one exposure each cost 2 s a listing). Asked for every
    experiment at once, each store gives the memory reference's per-experiment answers, in the order of
    ``experiments`` (keys too long to analyse left out), on raw parts and through one or two compacted
    parts' rollups joined to raw ones."""
    store, reference = make_store(), MemoryEventStore()
    keys = ["checkout", "😀" * (MAX_NAME_BYTES // 4), "x" * 300_000, *HOSTILE_NAMES]
    rng = random.Random(7)

    def apply(batch: int, n: int) -> None:
        exposures = [
            ExposureRow(f"e{batch}-{i}", rng.choice(keys), rng.choice("abc"), f"u{rng.randrange(40)}", ts)
            for i, ts in enumerate(rng.choices(range(10_000), k=n))
        ]
        for each in (store, reference):
            each.apply(exposures, [], {})

    def check() -> None:
        expected = [(key, list(reference.variant_counts(key).items())) for key in reference.experiments()]
        assert [(k, list(v.items())) for k, v in store.variant_counts_by_experiment().items()] == expected
        assert store.interleaving_experiments() == {"il"}

    for each in (store, reference):
        simulate_interleaving(each, "il", users=10, seed=1)
    apply(0, 400)
    check()
    if isinstance(store, DuckDBEventStore):
        for batch, everything in ((1, True), (2, False)):  # one rolled part, then two
            assert store.compact(everything=everything)
            check()
            apply(batch, 60)
            check()


def test_duckdb_compaction_rolls_up_no_outcome_name_too_long_for_its_query(tmp_path: Path) -> None:
    """The rollup query of a compaction holds each rolled-up outcome name 9 times: 64 names of 1 MB (any
    producer writes outcome names) made it 567 MB, and compaction took 21.6 s instead of 0.6 s. Such names are
    read raw, with the same numbers."""
    store = DuckDBEventStore(tmp_path / "s")
    longest, too_long = "n" * MAX_ROLLUP_NAME_CHARS, "n" * (MAX_ROLLUP_NAME_CHARS + 1)
    names = ["click", longest, too_long]
    outcomes = [OutcomeRow(f"o{i}", "u", name, 2, 1.0 + i) for i, name in enumerate(names)]
    store.apply([ExposureRow("e", "exp", "a", "u", 1)], outcomes, {TP: 1})
    assert store.compact(everything=True)
    (part,) = store._visible()
    assert part.rollup is not None and sorted(part.rollup["metrics"]) == ["click", longest]
    assert list(store.user_metric_values("exp", too_long)) == [("a", 3.0, 1, 0.0)]
    store.close()


def test_chdb_inserts_through_a_temporary_folder_whose_name_holds_a_quote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chDB inserts read a Parquet file written in the temporary folder, whose name was pasted into the SQL
    unquoted: TMPDIR=/tmp/it's made every insert a syntax error."""
    folder = tmp_path / "it's \\ tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    with open_store("chdb://") as store:
        store.apply([ExposureRow("e1", "exp", "a", "u1", 1)], [OutcomeRow("o1", "u1", "click", 2, 1.0)], {})
        assert store.counts() == {"exposed_users": 1, "outcomes": 1}


def test_duckdb_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with DuckDBEventStore(path) as store:
        store.apply([ExposureRow("e1", "exp", "a", "u1", 1)], [OutcomeRow("o1", "u1", "m", 2, 1.0)], {TP: 3})
    with DuckDBEventStore(path) as store:
        assert store.offsets() == {TP: 3}
        assert list(store.user_metric_values("exp", "m")) == [("a", 1.0, 1, 0.0)]


def test_duckdb_compaction_keeps_numbers_offsets_and_dedups(tmp_path: Path) -> None:
    reference = MemoryEventStore(attribution_window_ms=60)
    with DuckDBEventStore(tmp_path / "s", attribution_window_ms=60, compact_parts=0) as store:
        rng = random.Random(3)
        for i in range(12):
            exposures = [
                ExposureRow(f"e{i}-{u}", "x", rng.choice("ab"), f"u{u}", rng.randrange(100)) for u in range(9)
            ]
            outcomes = [OutcomeRow(f"o{rng.randrange(60)}", f"u{k % 9}", "click", k, 1.0) for k in range(20)]
            outcomes = [o._replace(user_id=f"u{int(o.event_id[1:]) % 9}", event_time_ms=int(o.event_id[1:]) * 3)
                        for o in outcomes]  # an event id always means the same event  # fmt: skip
            for s in (store, reference):
                s.apply(exposures, outcomes, {TP: i, TopicPartition("t", i % 2): i})
        before = _snapshot(store)
        assert before == _snapshot(reference) and len(list((tmp_path / "s" / "parts").iterdir())) == 12
        assert store.compact()  # the biggest part stays, the rest merges
        assert store.compact(everything=True)
        assert len(list((tmp_path / "s" / "parts").iterdir())) == 1
        assert _snapshot(store) == before and store.counts() == reference.counts()
        assert store.offsets() == {TP: 11, TopicPartition("t", 0): 10, TopicPartition("t", 1): 11}
        store.apply(exposures, outcomes, {TP: 12})  # replayed events after compaction: still counted once
        assert _snapshot(store) == before and store.offsets()[TP] == 12


def test_duckdb_crash_leftovers_are_invisible_and_cleaned_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "s"
    killed = DuckDBEventStore(path)
    killed.apply([ExposureRow("e1", "exp", "a", "u1", 1)], [], {TP: 1})
    # a commit the killed writer never renamed into parts/ (its process dies: its writer lock is released)
    dead = path / "tmp" / f"00000000000000000001-{killed._writer}-dead"
    dead.mkdir()
    (dead / "outcomes.parquet").write_bytes(b"half written")
    killed._writer_lock.close()
    with DuckDBEventStore(path) as reader:  # readers see only complete parts and never clean up
        assert reader.offsets() == {TP: 1} and reader.counts()["exposed_users"] == 1 and dead.exists()
        live = DuckDBEventStore(path)
        live.apply([], [], {TP: 2})  # a live writer's own commits in progress are left alone
        mine = path / "tmp" / f"00000000000000000002-{live._writer}-busy"
        mine.mkdir()
        with DuckDBEventStore(path) as writer:
            writer.apply([ExposureRow("e2", "exp", "a", "u2", 2)], [], {TP: 3})
            assert not dead.exists() and mine.exists()
            assert writer.offsets() == {TP: 3} and writer.counts()["exposed_users"] == 2
        mine.rmdir()
        live.close()


def test_open_store_urls_and_errors(tmp_path: Path) -> None:
    import sqlite3

    assert isinstance(open_store(None), MemoryEventStore)
    with open_store(f"duckdb://{tmp_path / 'a'}") as store:
        assert isinstance(store, DuckDBEventStore) and store.path == tmp_path / "a"
    old = tmp_path / "events.db"
    sqlite3.connect(old).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(
        StoreError, match=r"SQLite event store \(the previous format\).*python -m analytics migrate"
    ):
        open_store(old)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not a store")
    with pytest.raises(StoreError, match="not an event store"):
        open_store(tmp_path / "other")
    with pytest.raises(StoreError, match="unsupported store URL 'postgres://h/db'"):
        open_store("postgres://h/db")
    with pytest.raises(StoreUnreachable, match=r"cannot reach ClickHouse at 127.0.0.1:\d+"):
        open_store(f"clickhouse://127.0.0.1:{free_port()}/mtrank")


_READER = """
import sys, time
from pathlib import Path
from analytics.store import open_store
store = open_store(sys.argv[1])
deadline, seen = time.monotonic() + 60, []
while time.monotonic() < deadline:
    counts = store.counts()
    seen.append(counts["outcomes"])
    Path(sys.argv[3]).write_text(str(counts["outcomes"]))  # what it has seen, for the writer to pace itself
    assert counts["outcomes"] % 100 == 0, counts  # a commit is seen whole or not at all
    (variant, value, n, pre), = store.user_metric_values("x", "click")  # u0: one click per commit
    assert variant == "a" and value == n and pre == 0.0 and n <= int(sys.argv[2]) // 100
    if counts["outcomes"] == int(sys.argv[2]):
        break
print(len(set(seen)))
"""


@pytest.mark.integration
def test_duckdb_readers_in_another_process_while_the_writer_commits(tmp_path: Path) -> None:
    path, seen = tmp_path / "live", tmp_path / "seen"
    commits = 40
    with DuckDBEventStore(path, compact_parts=8) as store:
        store.apply([ExposureRow("e", "x", "a", "u0", 0)], [], {})
        reader = subprocess.Popen(
            [sys.executable, "-c", _READER, str(path), str(commits * 100), str(seen)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )  # fmt: skip
        for i in range(commits):  # compactions replace parts under the reader's feet as it reads
            store.apply([], [OutcomeRow(f"o{i}-{k}", f"u{k}", "click", 1, 1.0) for k in range(100)], {TP: i})
            if i % 10 == 0:  # now and then, let the reader (slow on a busy machine) catch up with the writer
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and (not seen.exists() or seen.read_text() != str(i * 100 + 100)):
                    time.sleep(0.01)
        out, err = reader.communicate(timeout=90)
    assert reader.returncode == 0, err[-3000:]
    assert int(out) > 2  # it saw the store grow, not just the end state


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
def test_duckdb_matches_memory_in_any_arrival_order(
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
    with DuckDBEventStore(
        tmp_path_factory.mktemp("h") / "s", attribution_window_ms=60, compact_parts=3
    ) as store:
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
