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
from analytics.stats.models.statistics import SampleMean
from analytics.store import (
    DuckDBEventStore,
    EventStore,
    ExposureRow,
    MemoryEventStore,
    OutcomeRow,
    duckdb_store,
    open_store,
)

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
                ExposureRow(f"{experiment}-{user}-x0", experiment, str(rng.choice(list(variants))), user, first)
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
    assert "argMin(variant, (ts, event_id))" in compiled["clickhouse"]
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
