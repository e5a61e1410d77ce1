"""The compiled SQL against the Python reference: DuckDB, ClickHouse (chDB) and MemoryEventStore's row path give
the same users per variant and the same statistics (1e-9 relative), reports and timelines included.

The event set is randomised: user ids in random order, exact duplicates, later exposures in other variants,
ties on the exposure time, pre-exposure and late outcomes, several experiments and metrics, window on and off.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analytics import sql_compiler as sql
from analytics.metrics import AnalysisConfig
from analytics.report import build_report
from analytics.stats.models.statistics import CupedMean, Proportion, Ratio, SampleMean
from analytics.store import (
    DuckDBEventStore,
    EventStore,
    ExposureRow,
    MemoryEventStore,
    OutcomeRow,
    duckdb_store,
    open_store,
)
from analytics.store.clickhouse_store import QUERY_SETTINGS

REL = 1e-9
START = 1_790_000_000_000
METRICS = [
    {"name": "converted", "type": "binomial", "event": "click"},
    {"name": "converted_cuped", "type": "binomial", "event": "click", "cuped": True},
    {"name": "clicks", "type": "count", "event": "click", "guardrail": True},
    {"name": "watch", "type": "continuous", "event": "watch", "cuped": True,
     "winsorize": {"lower_quantile": 0.05, "upper_quantile": 0.95}},
    {"name": "watch_capped", "type": "mean", "event": "watch", "winsorize": {"upper_value": 30.0, "lower_value": 1.0}},
    {"name": "watch_events", "type": "mean", "event": "watch", "aggregation": "count",
     "winsorize": {"upper_quantile": 0.9}},
    {"name": "revenue", "type": "mean", "event": "purchase", "inverse": True},
    {"name": "ctr", "type": "ratio", "numerator": "click", "denominator": "impression", "aggregation": "count"},
    {"name": "value_per_watch", "type": "ratio", "numerator": "purchase", "denominator": "watch"},
]  # fmt: skip


def random_events(seed: int) -> tuple[list[ExposureRow], list[OutcomeRow]]:
    rng = np.random.default_rng(seed)
    exposures, outcomes = [], []
    for e, (experiment, variants) in enumerate([("exp-a", "ab"), ("exp-b", "xyz"), ("exp-c", "pq")]):
        users = rng.permutation(400)[: 250 + 50 * e]
        for u in users:
            user = f"user-{u:04d}"
            first = START + int(rng.integers(0, 86_400_000))
            exposures.append(
                ExposureRow(
                    f"{experiment}-{user}-x0", experiment, str(rng.choice(list(variants))), user, first
                )
            )
            for k in range(int(rng.integers(0, 3))):  # later, or tied, exposures in any variant
                ts = first + int(rng.integers(0, 2)) * int(rng.integers(0, 50_000))
                exposures.append(
                    ExposureRow(
                        f"{experiment}-{user}-x{k + 1}", experiment, str(rng.choice(list(variants))), user, ts
                    )
                )
    for u in range(450):  # some users are never exposed
        user = f"user-{u:04d}"
        for k in range(int(rng.poisson(6))):
            metric = str(rng.choice(["click", "impression", "impression", "watch", "purchase", "unused"]))
            ts = START - 3_600_000 + int(rng.integers(0, 90_000_000))  # before, during and after exposures
            value = 1.0 if metric in ("click", "impression") else float(np.round(rng.exponential(10.0), 3))
            outcomes.append(OutcomeRow(f"{user}-o{k}", user, metric, ts, value))
    exposures += [exposures[i] for i in rng.integers(0, len(exposures), 60)]  # redelivered duplicates
    outcomes += [outcomes[i] for i in rng.integers(0, len(outcomes), 200)]
    order_e, order_o = rng.permutation(len(exposures)), rng.permutation(len(outcomes))
    return [exposures[i] for i in order_e], [outcomes[i] for i in order_o]


def fill(store: EventStore, exposures: list[ExposureRow], outcomes: list[OutcomeRow]) -> None:
    for i in range(0, max(len(exposures), len(outcomes)), 700):
        store.apply(exposures[i : i + 700], outcomes[i : i + 700], {})


@pytest.fixture(scope="module", params=[None, 3_600_000], ids=["no-window", "1h-window"])
def stores(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, EventStore]]:
    exposures, outcomes = random_events(seed=7)
    window = request.param
    folder = tmp_path_factory.mktemp("duck")
    built = {
        "memory": MemoryEventStore(attribution_window_ms=window),
        "duckdb": DuckDBEventStore(folder / "s", attribution_window_ms=window, compact_parts=0),
        "chdb": open_store("chdb://", attribution_window_ms=window),
    }
    for store in built.values():
        fill(store, exposures, outcomes)
    built["duckdb"].compact()  # a deduplicated base part and a raw tail: both query paths at once
    fill(built["duckdb"], exposures[:300], outcomes[:900])  # replayed after the compaction
    yield built
    for store in built.values():
        store.close()


def assert_close(a: Any, b: Any, where: str = "") -> None:
    """Equal, with floats compared at 1e-9 relative (ints, strings and structure exactly)."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        a, b = dataclasses.asdict(a), dataclasses.asdict(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=REL, abs_tol=1e-12), (
            f"{where}: {a} != {b}"
        )
    else:
        assert a == b and type(a) is type(b), f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("engine", ["duckdb", "chdb"])
@pytest.mark.parametrize("experiment", ["exp-a", "exp-b", "exp-c"])
def test_statistics_at_every_cut_match_the_reference(stores, engine: str, experiment: str) -> None:
    config = AnalysisConfig.model_validate({"metrics": METRICS})
    reference, store = stores["memory"], stores[engine]
    assert store.experiments() == reference.experiments() == ["exp-a", "exp-b", "exp-c"]
    assert store.variant_counts(experiment) == reference.variant_counts(experiment)
    assert store.time_range(experiment) == reference.time_range(experiment)
    assert store.exposure_timeline(experiment, 3_600_000) == reference.exposure_timeline(
        experiment, 3_600_000
    )
    assert store.counts() == reference.counts() and store.metrics() == reference.metrics()
    lo, hi = reference.time_range(experiment)
    cuts = [lo - 1, *(lo + (hi - lo) * k // 5 for k in range(5)), hi, None]  # one before any user
    expected = reference.metric_statistics(experiment, config.metrics, cuts)
    found = store.metric_statistics(experiment, config.metrics, cuts)
    assert_close(found, expected, f"{engine}/{experiment}")
    assert found[0] == [{} for _ in METRICS] and all(found[-1])
    for metric in ("click", "watch"):
        assert_close(list(store.user_metric_values(experiment, metric, hi - 5000)),
                     list(reference.user_metric_values(experiment, metric, hi - 5000)))  # fmt: skip


@pytest.mark.parametrize("engine", ["duckdb", "chdb"])
@pytest.mark.parametrize("metric", METRICS, ids=[m["name"] for m in METRICS])
def test_each_metric_alone_matches_the_reference(stores, engine: str, metric: dict) -> None:
    """A metric compiled without the others: it may not rely on a measure only another metric declares (a
    winsorised mean without CUPED once read a pre-exposure column no metric asked for)."""
    config = AnalysisConfig.model_validate({"metrics": [metric]})
    reference, store = stores["memory"], stores[engine]
    lo, hi = reference.time_range("exp-a")
    cuts = [lo + (hi - lo) * k // 3 for k in range(1, 3)] + [None]
    for some in (cuts, [None]):
        assert_close(store.metric_statistics("exp-a", config.metrics, some),
                     reference.metric_statistics("exp-a", config.metrics, some), f"{engine}/{metric['name']}")  # fmt: skip


@pytest.mark.parametrize("engine", ["duckdb", "chdb"])
def test_reports_and_timelines_match_the_reference(stores, engine: str) -> None:
    config = AnalysisConfig.model_validate(
        {"metrics": METRICS, "timeline_points": 7, "sequential": engine == "chdb",  # sequential or not: the same sums
         "experiments": {"exp-b": {"control": "y", "weights": {"x": 1, "y": 2, "z": 1}}}}
    )  # fmt: skip
    for experiment in ("exp-a", "exp-b", "exp-c"):
        expected = build_report(stores["memory"], config, experiment).to_dict()
        found = build_report(stores[engine], config, experiment).to_dict()
        expected.pop("generated_at_ms"), found.pop("generated_at_ms")
        assert len(found["timeline"]) == 7 * len(METRICS) * (len(found["variants"]) - 1)
        assert_close(found, expected, f"{engine}/{experiment}")


CROSSING = [  # a quantile cap passing the fixed value on its other side (a sparse outcome's 90% quantile: 0)
    {"name": "floor_p90", "type": "mean", "event": "purchase",
     "winsorize": {"lower_value": 1.0, "upper_quantile": 0.9}},
    {"name": "floor_p80_cuped", "type": "mean", "event": "purchase", "cuped": True,
     "winsorize": {"lower_value": 0.5, "upper_quantile": 0.8}},
    {"name": "p50_ceiling", "type": "mean", "event": "watch",
     "winsorize": {"lower_quantile": 0.5, "upper_value": 2.0}},
    {"name": "clicks_floor_p70", "type": "count", "event": "click",
     "winsorize": {"lower_value": 1, "upper_quantile": 0.7}},
]  # fmt: skip


@pytest.mark.parametrize("engine", ["duckdb", "chdb"])
def test_caps_that_cross_a_fixed_value_clip_as_numpy_does(stores, engine: str) -> None:
    """numpy's clip (the reference) gives every value the upper limit when the lower one is above it; the SQL
    clipped the values below the lower limit up to it and the others down to the upper one."""
    config = AnalysisConfig.model_validate({"metrics": CROSSING})
    reference, store = stores["memory"], stores[engine]
    for experiment in ("exp-a", "exp-b"):
        lo, hi = reference.time_range(experiment)
        cuts = [*(lo + (hi - lo) * k // 6 for k in range(1, 6)), None]
        for some in (cuts, cuts[2:3], [None]):
            expected = reference.metric_statistics(experiment, config.metrics, some)
            assert_close(store.metric_statistics(experiment, config.metrics, some), expected, experiment)


def test_crossing_caps_by_hand(tmp_path: Path) -> None:
    values = np.array([0.0, 1.0, 5.0, 10.0, 20.0, 3.0])  # users u0..u5, variants a, b, a, b, ...
    exposures = [ExposureRow(f"x{i}", "e", "ab"[i % 2], f"u{i}", 100 + i) for i in range(6)]
    outcomes = [OutcomeRow(f"o{i}", f"u{i}", "buy", 200, float(v)) for i, v in enumerate(values)]
    caps = [{"lower_quantile": 0.5, "upper_value": 2.0}, {"lower_value": 8.0, "upper_quantile": 0.2}]
    metrics = [{"name": f"m{i}", "type": "mean", "event": "buy", "winsorize": w} for i, w in enumerate(caps)]
    config = AnalysisConfig.model_validate({"metrics": metrics})
    clipped = [np.clip(values, np.quantile(values, 0.5), 2.0), np.clip(values, 8.0, np.quantile(values, 0.2))]
    expected = [
        {v: SampleMean.from_values(c[i::2]) for i, v in enumerate("ab")} for c in clipped
    ]  # every value is the upper limit: 2.0 and 1.0
    assert [s["a"].sum for s in expected] == [6.0, 3.0]
    stores = [MemoryEventStore(), DuckDBEventStore(tmp_path / "s"), open_store("chdb://")]
    for store in stores:
        store.apply(exposures, outcomes, {})
        assert_close(store.metric_statistics("e", config.metrics, [None]), [expected], repr(store))
        store.close()


# Edge cases by hand: a tie on the first exposure (the smaller event id wins), a later exposure in another
# variant, outcomes at the first exposure, at the last millisecond of the window and at its end, at a cut,
# before exposure, exact copies, a retry with the event's id at a later time, copies with different values, a
# user without outcomes, one exposed after a cut, a unicode id, a huge value, an unexposed user, another
# experiment.
HAND_EXPOSURES = [
    ExposureRow("x1", "e", "a", "u1", 1000), ExposureRow("x0", "e", "b", "u1", 1000),
    ExposureRow("x2", "e", "a", "ü2", 1000), ExposureRow("x3", "e", "a", "u3", 1500),
    ExposureRow("x3b", "e", "b", "u3", 2500), ExposureRow("x4", "e", "b", "u4", 3000),
    ExposureRow("x5", "e", "b", "u5", 500), ExposureRow("x5", "e", "b", "u5", 500),
    ExposureRow("f1", "f", "a", "u1", 0),
]  # fmt: skip
HAND_OUTCOMES = [
    OutcomeRow("o1", "ü2", "buy", 1000, 1.0), OutcomeRow("o2", "ü2", "buy", 1999, 100.0),
    OutcomeRow("o3", "ü2", "buy", 2000, 10.0), OutcomeRow("o4", "ü2", "buy", 999, 7.0),
    OutcomeRow("o5", "ü2", "view", 1500, 1.0), OutcomeRow("o10", "u5", "buy", 1499, 2e6),
    OutcomeRow("o6", "u1", "buy", 1800, 3.0), OutcomeRow("o6", "u1", "buy", 1800, 3.0),
    OutcomeRow("o6", "u1", "buy", 1950, 3.0), OutcomeRow("o7", "u1", "view", 1500, 1.0),
    OutcomeRow("o8", "u4", "buy", 3000, 2.0), OutcomeRow("o9", "u5", "buy", 400, 5.0),
    OutcomeRow("o10", "u5", "buy", 1499, 1e6), OutcomeRow("o11", "u5", "view", 1499, 1.0),
    OutcomeRow("o12", "u9", "buy", 1000, 1.0),
]  # fmt: skip
HAND_METRICS = [
    {"name": "bought", "type": "binomial", "event": "buy"},
    {"name": "buys", "type": "count", "event": "buy"},
    {"name": "spend", "type": "mean", "event": "buy", "cuped": True},
    {"name": "spend_capped", "type": "mean", "event": "buy",
     "winsorize": {"lower_value": 2.0, "upper_value": 50.0}},
    {"name": "buys_per_view", "type": "ratio", "numerator": "buy", "denominator": "view",
     "aggregation": "count"},
]  # fmt: skip


def _direct(metric: dict, cut: int | None, window: int | None) -> dict[str, Any]:
    """The metric's statistics computed with pandas from ``HAND_*`` (independently of the stores)."""
    import pandas as pd

    until = np.inf if cut is None else cut
    x = pd.DataFrame(HAND_EXPOSURES, columns=ExposureRow._fields)
    first = x[x.experiment_key == "e"].sort_values(["event_time_ms", "event_id"]).groupby("user_id").first()
    first = first[first.event_time_ms <= until]
    o = pd.DataFrame(HAND_OUTCOMES, columns=OutcomeRow._fields)
    o = o.groupby(["event_id", "user_id", "metric"], as_index=False).min()  # earliest time, smallest value
    o = o.join(first.event_time_ms.rename("first"), on="user_id", how="inner")
    end = o["first"] + (np.inf if window is None else window)
    post = o[(o.event_time_ms >= o["first"]) & (o.event_time_ms < end) & (o.event_time_ms <= until)]
    pre = o[o.event_time_ms < o["first"]]

    def per_user(rows: pd.DataFrame, event: str, how: str) -> pd.Series:
        rows = rows[rows.metric == event].groupby("user_id").value
        return (rows.sum() if how == "sum" else rows.count()).reindex(first.index, fill_value=0).astype(float)

    out: dict[str, Any] = {}
    for variant, users in first.groupby("variant_key").groups.items():
        if metric["type"] == "ratio":
            num, den = (per_user(post, metric[k], "count")[users] for k in ("numerator", "denominator"))
            out[variant] = Ratio.from_values(num.to_numpy(), den.to_numpy())
            continue
        event = metric["event"]
        value = per_user(post, event, "sum" if metric["type"] == "mean" else "count")[users].to_numpy()
        caps = metric.get("winsorize", {})
        if metric["type"] == "binomial":
            out[variant] = Proportion.from_values(value > 0)
        elif metric.get("cuped"):
            out[variant] = CupedMean.from_values(value, per_user(pre, event, "sum")[users].to_numpy())
        else:
            clipped = np.clip(value, caps.get("lower_value"), caps.get("upper_value"))
            out[variant] = SampleMean.from_values(clipped)
    return out


@pytest.mark.parametrize("window", [None, 1000])
def test_hand_built_edge_cases_match_a_direct_computation(tmp_path: Path, window: int | None) -> None:
    config = AnalysisConfig.model_validate({"metrics": HAND_METRICS})
    cuts = [999, 1999, 2000, None]
    expected = [[_direct(m, cut, window) for m in HAND_METRICS] for cut in cuts]
    assert expected[-1][0] == {"a": Proportion(2, 1.0), "b": Proportion(3, 3.0)}
    assert expected[-1][2]["a"].post.sum == (111.0 if window is None else 101.0)  # o3 at the window's end
    duck = DuckDBEventStore(tmp_path / "s", attribution_window_ms=window, compact_parts=0)
    stores = [MemoryEventStore(window), duck, open_store("chdb://", attribution_window_ms=window)]
    for store in stores:
        store.apply(HAND_EXPOSURES[:4], HAND_OUTCOMES[:6], {})
        store.apply(HAND_EXPOSURES[4:], HAND_OUTCOMES[6:], {})
    for compacted in (False, True):
        if compacted:  # the events read through a compacted part's rollups, and copies replayed after it
            assert duck.compact(everything=True)
            duck.apply(HAND_EXPOSURES[::3], HAND_OUTCOMES[::2], {})
        for store in stores:
            assert_close(store.metric_statistics("e", config.metrics, cuts), expected, repr(store))
    for store in stores:
        store.close()


def test_the_same_sql_runs_on_both_engines_from_one_definition() -> None:
    config = AnalysisConfig.model_validate({"metrics": METRICS})
    relations = sql.Relations(
        exposures=sql.exp.to_table("exposures"), outcomes_raw=sql.exp.to_table("outcomes")
    )
    compiled = {
        dialect: sql.compile_report(relations, "exp-a", config.metrics, [START, None], 60_000, dialect).sql
        for dialect in sql.DIALECTS
    }
    assert (
        "QUANTILE_CONT(" in compiled["duckdb"] and "quantileExactInclusive(0.95)(" in compiled["clickhouse"]
    )
    assert "argMin(v, (t, id))" in compiled["clickhouse"]
    assert compiled["duckdb"].count("WITH ") == 1  # one query, every stage a CTE


def test_unknown_metric_type_is_named() -> None:
    metric = (
        AnalysisConfig.model_validate({"metrics": METRICS}).metrics[0].model_copy(update={"type": "median"})
    )
    with pytest.raises(ValueError, match="no SQL compiler for metric type 'median'; known: "):
        sql.kind_of(metric)


def test_a_hash_key_shared_by_two_users_falls_back_to_user_ids(tmp_path: Path, monkeypatch) -> None:
    # A deliberately bad key (the id's length) makes "u1" and "u2" share one: the answer must not change.
    monkeypatch.setattr(duckdb_store, "KEY_FUNCTION", "length")
    config = AnalysisConfig.model_validate({"metrics": METRICS[:4]})
    exposures = [ExposureRow("x1", "e", "a", "u1", 10), ExposureRow("x2", "e", "b", "u2", 20)]
    outcomes = [OutcomeRow("o1", "u1", "click", 15, 1.0), OutcomeRow("o2", "u3", "click", 25, 1.0)]
    reference = MemoryEventStore()
    reference.apply(exposures, outcomes, {})
    with DuckDBEventStore(tmp_path / "s") as store:
        store.apply(exposures, outcomes, {})
        expected = reference.metric_statistics("e", config.metrics, [None])
        assert store.metric_statistics("e", config.metrics, [None]) == expected
        assert expected[0][2] == {"a": SampleMean(1, 1.0, 1.0), "b": SampleMean(1, 0.0, 0.0)}


# ---------------------------------------------------------------- rollups: compacted parts, raw tails, boundaries

BUCKET_MS = 1_200_000  # 20-minute rollup buckets: the 25 hours of events span many, and cuts fall inside them


def straddling_events(seed: int) -> list[tuple[list[ExposureRow], list[OutcomeRow]]]:
    """``random_events`` in three arrival batches (two to compact, one raw tail), plus events on rollup bucket
    edges, exposures arriving late (earlier than the compacted first exposure, some in another variant) and
    redelivered copies of compacted events in the tail."""
    exposures, outcomes = random_events(seed)
    rng = np.random.default_rng(seed + 1)
    edge = []
    for i, row in enumerate(outcomes[:300]):  # moved to a bucket edge (-1, 0, +1 ms)
        ts = (row.event_time_ms // BUCKET_MS + int(rng.integers(0, 2))) * BUCKET_MS + int(rng.integers(-1, 2))
        edge.append(row._replace(event_id=f"edge-{i}", event_time_ms=ts))
    bursts = []  # several events of a user within minutes: around random times, first exposures, window ends
    for i, row in enumerate(exposures[:120]):
        centre = [START + int(rng.integers(0, 90_000_000)), row.event_time_ms, row.event_time_ms + 3_600_000][
            i % 3
        ]
        for k in range(6):
            metric = str(rng.choice(["click", "impression", "watch", "purchase"]))
            value = 1.0 if metric in ("click", "impression") else float(np.round(rng.exponential(10.0), 3))
            ts = centre + int(rng.integers(-300_000, 300_000))
            bursts.append(OutcomeRow(f"burst-{i}-{k}", row.user_id, metric, ts, value))
    outcomes = outcomes + edge + bursts
    outcomes = [outcomes[i] for i in rng.permutation(len(outcomes))]
    a, b = len(exposures) // 2, 3 * len(exposures) // 4
    c, d = len(outcomes) // 2, 3 * len(outcomes) // 4
    batches = [(exposures[:a], outcomes[:c]), (exposures[a:b], outcomes[c:d]), (exposures[b:], outcomes[d:])]
    variants = {"exp-a": "ab", "exp-b": "xyz", "exp-c": "pq"}
    late = [
        row._replace(event_id=f"late-{i}", variant_key=str(rng.choice(list(variants[row.experiment_key]))),
                     event_time_ms=row.event_time_ms - int(rng.integers(1, 3 * 3_600_000)))
        for i, row in enumerate(exposures[: a : 7])
    ]  # fmt: skip
    replayed = [outcomes[i] for i in rng.integers(0, d, 150)] + [exposures[i] for i in rng.integers(0, b, 40)]
    batches[2] = (batches[2][0] + late + [r for r in replayed if isinstance(r, ExposureRow)],
                  batches[2][1] + [r for r in replayed if isinstance(r, OutcomeRow)])  # fmt: skip
    return batches


def _keyed(table: sql.exp.Expression) -> sql.exp.Select:
    """A ClickHouse table with the user key and check the rollups are keyed by (two independent 64-bit hashes)."""
    user = sql.exp.column("user_id")
    return sql.exp.select(
        "*",
        sql.exp.alias_(sql.exp.Anonymous(this="sipHash64", expressions=[user]), "user_key"),
        sql.exp.alias_(sql.exp.Anonymous(this="cityHash64", expressions=[user.copy()]), "user_check"),
    ).from_(table)


def _written(store: Any, name: str, query: sql.exp.Query) -> sql.exp.Table:
    """``query`` (ClickHouse SQL, run with the store's query settings) written to the table ``name`` of the
    chDB ``store``'s database, as a compaction writes a part's files: report queries read the table, and
    ClickHouse plans the query once, not within each report query (which took most of their time)."""
    table = store._table(name)
    dialect = sql.DIALECTS["clickhouse"]
    settings = ", ".join(f"{k} = {v}" for k, v in QUERY_SETTINGS.items())
    store.client.command(
        f"CREATE TABLE {table.sql(dialect=dialect)} ENGINE = Memory AS {query.sql(dialect=dialect)} "
        f"SETTINGS {settings}"
    )
    return table


def chdb_rolled_relations(compacted: Any, tail: Any) -> sql.Relations:
    """The events of two chDB stores as the DuckDB store lays them out: ``compacted`` as one rolled part (its
    keyed exposures, unique outcomes and rollups written to tables of its database by the same compiled SQL,
    in ClickHouse's dialect), ``tail`` as raw events."""
    exposures, tail_exposures = (_keyed(s._table("exposures")) for s in (compacted, tail))
    unique = sql.unique_outcomes(
        sql.Relations(None, outcomes_raw=_keyed(compacted._table("outcomes")), user_key="user_key",
                      user_check="user_check")
    )  # fmt: skip
    every_exposure = sql.exp.union(exposures.copy(), tail_exposures.copy(), distinct=False)
    metrics = ("click", "impression", "watch")  # "purchase" stays unrolled: read raw from the part
    part = sql.RolledPart(
        exposures=_written(compacted, "part_exposures", exposures),
        outcomes=_written(compacted, "part_outcomes", unique),
        first_exposures=_written(compacted, "part_first_exposures", sql.exposure_rollup(exposures)),
        outcome_rollup=_written(
            compacted, "part_outcome_rollup", sql.outcome_rollup(unique, every_exposure, metrics, BUCKET_MS)
        ),
        metrics=metrics,
        bucket_ms=BUCKET_MS,
    )
    return sql.Relations(
        tail_exposures, outcomes_raw=_keyed(tail._table("outcomes")), user_key="user_key",
        user_check="user_check", rollups=(part,),
    )  # fmt: skip


@pytest.fixture(scope="module", params=[None, 3_600_000], ids=["no-window", "1h-window"])
def rolled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The same events in the reference, in a DuckDB store as two compacted (rolled-up) parts and a raw tail, and
    in chDB as one rolled part (rollups built in ClickHouse SQL, once) and a raw tail."""
    window = request.param
    batches = straddling_events(seed=11)
    memory = MemoryEventStore(attribution_window_ms=window)
    duck = DuckDBEventStore(tmp_path_factory.mktemp("rolled") / "s", attribution_window_ms=window, compact_parts=0,
                            rollup_bucket_ms=BUCKET_MS)  # fmt: skip
    compacted, tail = (open_store("chdb://", attribution_window_ms=window) for _ in range(2))
    for i, (exposures, outcomes) in enumerate(batches):
        fill(memory, exposures, outcomes)
        fill(duck, exposures, outcomes)
        fill(tail if i == 2 else compacted, exposures, outcomes)
        if i < 2:  # the first batch compacts whole; the second, smaller, into a second compacted part
            assert duck.compact(everything=i == 0)
    assert len(duck.relations().rollups) == 2 and duck.relations().outcomes_raw is not None
    # cut points in the middle of bursts: the rolled-up rows of those buckets straddle them
    times = sorted(
        r.event_time_ms
        for _, outcomes in batches
        for r in outcomes
        if r.event_id.startswith("burst-") and r.event_id.endswith("-3")
    )
    chdb = (compacted, chdb_rolled_relations(compacted, tail))
    yield {"memory": memory, "duckdb": duck, "chdb": chdb, "window": window, "times": times}
    for store in (memory, duck, compacted, tail):
        store.close()


def _statistics(rolled: dict[str, Any], engine: str, experiment: str, metrics: list, cuts: list) -> list:
    if engine == "duckdb":
        return rolled["duckdb"].metric_statistics(experiment, metrics, cuts)
    compacted, relations = rolled["chdb"]
    compiled = sql.compile_report(relations, experiment, metrics, cuts, rolled["window"], "clickhouse")
    return compiled.decode(*compacted.client.query(compiled.sql))


def _cuts(rolled: dict[str, Any], experiment: str) -> list[int | None]:
    """Cut points that fall before every user, inside rollup buckets, on a bucket edge, and on event times."""
    lo, hi = rolled["memory"].time_range(experiment)
    edge = (lo + (hi - lo) // 3) // BUCKET_MS * BUCKET_MS
    inside = [t for t in rolled["times"] if lo < t < hi][::4]
    cuts = {lo - 1, *(lo + (hi - lo) * k // 7 for k in range(7)), edge, edge - 1, hi, *inside}
    return [*sorted(cuts), None]


@pytest.mark.parametrize("engine", ["duckdb", "chdb"])
@pytest.mark.parametrize("experiment", ["exp-a", "exp-b", "exp-c"])
def test_rolled_up_parts_and_raw_tails_give_the_reference_statistics(
    rolled, engine: str, experiment: str
) -> None:
    config = AnalysisConfig.model_validate({"metrics": METRICS})
    reference = rolled["memory"]
    cuts = _cuts(rolled, experiment)
    expected = reference.metric_statistics(experiment, config.metrics, cuts)
    assert_close(
        _statistics(rolled, engine, experiment, config.metrics, cuts), expected, f"{engine}/{experiment}"
    )
    for one in (cuts[3:4], [None]):  # the single-cut query
        assert_close(_statistics(rolled, engine, experiment, config.metrics, one),
                     reference.metric_statistics(experiment, config.metrics, one))  # fmt: skip
    if engine == "duckdb":
        store = rolled["duckdb"]
        assert store.variant_counts(experiment) == reference.variant_counts(experiment)
        assert store.exposure_timeline(experiment, 3_600_000) == reference.exposure_timeline(
            experiment, 3_600_000
        )
        assert store.time_range(experiment) == reference.time_range(experiment)
        assert store.counts() == reference.counts() and store.metrics() == reference.metrics()


def test_the_rollup_path_reads_raw_events_where_rows_straddle_a_boundary(rolled) -> None:
    """The differential test above exercises every path: rows used whole, rows read back raw, unrolled names."""
    config = AnalysisConfig.model_validate({"metrics": METRICS})
    relations = rolled["duckdb"].relations()
    layout = sql._Layout()
    for metric in config.metrics:
        for need in sql.kind_of(metric).needs(metric):
            layout.need_index(need)
    cuts = _cuts(rolled, "exp-a")
    user_rows = sql._UserRows(relations, "exp-a", layout, cuts, rolled["window"])
    ctes = user_rows.ctes(by_cut=True)
    count = sql.exp.select(
        sql.exp.alias_(sql.exp.Sum(this=sql.exp.column("clean")), "clean"),
        sql.exp.alias_(sql.exp.Count(this=sql.exp.Star()), "rows"),
    ).from_("classified")
    for name, cte in ctes:
        count = count.with_(name, as_=cte)
    clean, rows = rolled["duckdb"].db.execute(count.sql(dialect=sql.DIALECTS["duckdb"])).fetchone()
    assert 0 < rows - clean < clean  # some rolled-up rows straddle a boundary and are read raw; most do not


def test_a_compaction_that_fails_while_writing_rollups_leaves_the_store_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rollups are written in the compaction's own folder before its manifest is renamed into ``parts/``: a
    failure while writing them changes nothing visible, and the next compaction writes them whole."""
    config = AnalysisConfig.model_validate({"metrics": METRICS})
    exposures, outcomes = random_events(seed=5)
    reference = MemoryEventStore()
    fill(reference, exposures, outcomes)
    store = DuckDBEventStore(tmp_path / "s", compact_parts=0)
    fill(store, exposures, outcomes)
    cuts = [*(c for c in reference.time_range("exp-a")), None]
    expected = reference.metric_statistics("exp-a", config.metrics, cuts)
    parts = sorted(p.name for p in store._visible())

    def killed(*args: Any, **kwargs: Any) -> None:
        raise OSError("killed while writing the rollups")

    with monkeypatch.context() as patch:
        patch.setattr(sql, "outcome_rollup", killed)
        with pytest.raises(OSError, match="killed"):
            store.compact(everything=True)
    assert sorted(p.name for p in store._visible()) == parts
    assert not [f for f in (tmp_path / "s" / "tmp").iterdir() if f.is_dir()]  # the half-written part is gone
    assert_close(store.metric_statistics("exp-a", config.metrics, cuts), expected)
    assert store.compact(everything=True)
    (part,) = store._visible()
    assert part.rollup is not None and store.relations().rollups
    assert_close(store.metric_statistics("exp-a", config.metrics, cuts), expected)
    store.close()


def test_outcomes_at_the_ends_of_the_time_range_count_in_compacted_parts(tmp_path: Path) -> None:
    """Producers may stamp any 64-bit time: a rolled-up half whose events all lay at or after 2**62 (once the
    rollup's mark for "no event") was taken for empty, so a compaction dropped those outcomes."""
    metrics = [{"name": "clicks", "type": "count", "event": "click"},
               {"name": "watch", "type": "mean", "event": "watch", "cuped": True}]  # fmt: skip
    config = AnalysisConfig.model_validate({"metrics": metrics})
    exposures = [ExposureRow("x1", "e", "a", "u1", 1000), ExposureRow("x2", "e", "b", "u2", 1000),
                 ExposureRow("x3", "e", "a", "u3", -(2**62) - 10)]  # fmt: skip
    outcomes = [
        OutcomeRow("o1", "u1", "click", 2**62 + 5, 1.0), OutcomeRow("o2", "u2", "click", 2**63 - 1, 1.0),
        OutcomeRow("o3", "u2", "watch", 2000, 3.0), OutcomeRow("o4", "u2", "watch", 2**62, 4.0),
        OutcomeRow("o5", "u3", "watch", -(2**63), 5.0), OutcomeRow("o6", "u3", "watch", -(2**62) - 5, 6.0),
        OutcomeRow("o7", "u3", "click", -(2**62), 1.0),
    ]  # fmt: skip
    reference = MemoryEventStore()
    reference.apply(exposures, outcomes, {})
    cuts = [2000, None]
    expected = reference.metric_statistics("e", config.metrics, cuts)
    assert expected[-1][0] == {"a": SampleMean(2, 2.0, 2.0), "b": SampleMean(1, 1.0, 1.0)}
    with DuckDBEventStore(tmp_path / "s", compact_parts=0) as duck:
        duck.apply(exposures, outcomes, {})
        assert duck.compact(everything=True) and duck.relations().rollups
        assert_close(duck.metric_statistics("e", config.metrics, cuts), expected)
