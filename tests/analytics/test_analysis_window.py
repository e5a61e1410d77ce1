"""The analysis window (``experiments.<key>.start`` / ``end``): config validation, and on every store the same
small event set analysed with and without a window, the expected numbers worked out by hand below."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics.analysis_window import ALL_TIME, AnalysisWindow
from analytics.interleaving import Arm, ArmsSeen
from analytics.metrics import AnalysisConfig, MetricConfigError, MetricDefinition, load_analysis_config
from analytics.report import build_report, experiment_summary, format_report_table
from analytics.stats.models.statistics import PreferenceCounts, Proportion, SampleMean
from analytics.store import (
    DuckDBEventStore,
    EventStore,
    ExposureRow,
    MemoryEventStore,
    OutcomeRow,
    open_store,
)
from analytics.store.base import InterleavedRow, ItemOutcomeRow

WINDOW = AnalysisWindow(100, 200)

# Experiment "exp". In the window [100, 200): users first exposed at 100 <= t < 200, outcomes before 200.
EXPOSURES = [
    ExposureRow("e1a", "exp", "control", "u1", 50),  # first exposed before the start: out...
    ExposureRow("e1b", "exp", "control", "u1", 150),  # ...even though exposed again inside
    ExposureRow("e2", "exp", "control", "u2", 100),  # at the start: in
    ExposureRow("e3a", "exp", "treatment", "u3", 120),
    ExposureRow("e3b", "exp", "treatment", "u3", 250),  # a later exposure of a user in the window
    ExposureRow("e4", "exp", "treatment", "u4", 199),  # the last millisecond: in
    ExposureRow("e5", "exp", "control", "u5", 200),  # at the end: out
    ExposureRow("e6", "exp", "treatment", "u6", 300),
    ExposureRow("e7", "exp", "control", "u7", 60),
]
OUTCOMES = [
    OutcomeRow("o1", "u1", "buy", 160, 100.0),
    OutcomeRow("o2a", "u2", "buy", 90, 7.0),  # before u2's exposure: the pre-exposure value
    OutcomeRow("o2b", "u2", "buy", 100, 1.0),
    OutcomeRow("o2c", "u2", "buy", 199, 2.0),
    OutcomeRow("o2d", "u2", "buy", 200, 4.0),  # at the end: not in the window
    OutcomeRow("o3a", "u3", "buy", 130, 10.0),
    OutcomeRow("o3b", "u3", "buy", 500, 20.0),  # after the end
    OutcomeRow("o4a", "u4", "buy", 198, 3.0),  # pre-exposure
    OutcomeRow("o4b", "u4", "buy", 199, 5.0),
    OutcomeRow("o5", "u5", "buy", 210, 30.0),
    OutcomeRow("o6", "u6", "buy", 310, 40.0),
    OutcomeRow("o7", "u7", "buy", 70, 50.0),
]

# Interleaving experiment "il", arms A (team 0) and B (team 1). In the window: users b (A's item clicked at
# 130; B's at 210, after the end) and c (B's item); user a was first shown a list at 50, d at 250. B's model
# was version 0 before the window (a1, retried at 60) and again after it (d1, a rollback): 3 exposures of the
# old pair, 3 of the new one, the old one first (by first time) of all time, the only one in the window.
ARMS = ("a", "model-a", "1", "b", "model-b", "1")
OLD_ARMS = ("a", "model-a", "1", "b", "model-b", "0")
INTERLEAVED = [
    InterleavedRow("i-a1", "il", "a", "a1", 50, [5, 6], [0, 1], *OLD_ARMS),
    InterleavedRow("i-a1-retry", "il", "a", "a1", 60, [5, 6], [0, 1], *OLD_ARMS),
    InterleavedRow("i-a2", "il", "a", "a2", 150, [7, 8], [0, 1], *ARMS),
    InterleavedRow("i-b1", "il", "b", "b1", 120, [1, 2], [0, 1], *ARMS),
    InterleavedRow("i-c1", "il", "c", "c1", 150, [3, 4], [1, 0], *ARMS),
    InterleavedRow("i-d1", "il", "d", "d1", 250, [9, 10], [0, 1], *OLD_ARMS),
]
CLICKS = [
    ItemOutcomeRow("c-a", "a", "a2", 8, "click", 160),
    ItemOutcomeRow("c-b1", "b", "b1", 1, "click", 130),
    ItemOutcomeRow("c-b2", "b", "b1", 2, "click", 210),
    ItemOutcomeRow("c-c", "c", "c1", 3, "click", 160),
]

STORES = ["memory", "duckdb", "duckdb-rolled-100", "duckdb-rolled-1000", "chdb"]
"""duckdb-rolled-N: compacted with rollups of N ms buckets (100: every rolled-up row lies on one side of the
window's end; 1000: u2's row straddles it and is read back raw)."""


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    kind: str = request.param
    if kind == "memory":
        store: EventStore = MemoryEventStore()
    elif kind == "chdb":
        store = open_store("chdb://")
    else:
        bucket = int(kind.rsplit("-", 1)[1]) if "rolled" in kind else 3_600_000
        store = DuckDBEventStore(tmp_path / "s", compact_parts=0, rollup_bucket_ms=bucket)
    il_exposures = [
        ExposureRow(e.event_id, "il", "interleaved", e.user_id, e.event_time_ms) for e in INTERLEAVED
    ]
    il_outcomes = [OutcomeRow(c.event_id, c.user_id, c.metric, c.event_time_ms, 1.0) for c in CLICKS]
    half = len(EXPOSURES) // 2  # two parts, so that a compaction merges
    store.apply(EXPOSURES[:half], OUTCOMES[:half], {})
    store.apply(
        EXPOSURES[half:] + il_exposures,
        OUTCOMES[half:] + il_outcomes,
        {},
        interleaved=INTERLEAVED,
        item_outcomes=CLICKS,
    )
    if "rolled" in kind:
        assert isinstance(store, DuckDBEventStore) and store.compact(everything=True)
    yield store
    store.close()


def test_users_and_outcomes_of_the_window(store: EventStore) -> None:
    # everything: u1 (first at 50) and u7 in control, u5 and u6 too; every outcome after the first exposure
    assert list(store.user_metric_values("exp", "buy")) == [
        ("control", 100.0, 1, 0.0),  # u1
        ("control", 7.0, 3, 7.0),  # u2: 1 + 2 + 4, pre 7
        ("treatment", 30.0, 2, 0.0),  # u3
        ("treatment", 5.0, 1, 3.0),  # u4
        ("control", 30.0, 1, 0.0),  # u5
        ("treatment", 40.0, 1, 0.0),  # u6
        ("control", 50.0, 1, 0.0),  # u7
    ]
    assert list(store.user_metric_values("exp", "buy", window=WINDOW)) == [
        ("control", 3.0, 2, 7.0),  # u2: 1 + 2 (4 at the end left out), pre 7 as before
        ("treatment", 10.0, 1, 0.0),  # u3: 20 after the end left out
        ("treatment", 5.0, 1, 3.0),  # u4
    ]
    assert list(store.user_metric_values("exp", "buy", 150, window=WINDOW)) == [
        ("control", 1.0, 1, 7.0),  # as of 150: u2's outcome at 100
        ("treatment", 10.0, 1, 0.0),  # u3; u4 not exposed yet
    ]
    assert store.variant_counts("exp") == {"control": 4, "treatment": 3}
    assert store.variant_counts("exp", window=WINDOW) == {"control": 1, "treatment": 2}
    # one bound only: before the end (u1, u2, u7 | u3, u4), from the start (u2, u5 | u3, u4, u6)
    assert store.variant_counts("exp", window=AnalysisWindow(None, 200)) == {"control": 3, "treatment": 2}
    assert store.variant_counts("exp", window=AnalysisWindow(100, None)) == {"control": 2, "treatment": 3}
    assert store.exposure_timeline("exp", 100) == [
        (0, "control", 2), (100, "control", 1), (100, "treatment", 2), (200, "control", 1),
        (300, "treatment", 1),
    ]  # fmt: skip
    assert store.exposure_timeline("exp", 100, window=WINDOW) == [(100, "control", 1), (100, "treatment", 2)]
    assert store.time_range("exp") == (50, 300)
    # u2, u3, u4: first exposed from 100; u3's exposure at 250 is after the end, where the analysis stops
    assert store.time_range("exp", window=WINDOW) == (100, 199)
    assert store.time_range("exp", window=AnalysisWindow(100, 1000)) == (100, 300)
    assert store.time_range("exp", window=AnalysisWindow(400, 500)) == (0, 0)


def test_metric_statistics_of_the_window(store: EventStore) -> None:
    metrics = [
        MetricDefinition(name="revenue", type="mean", event="buy"),
        MetricDefinition(name="buyers", type="binomial", event="buy"),
    ]
    everything = store.metric_statistics("exp", metrics, [None])[0]
    assert everything[0] == {
        "control": SampleMean(4, 187.0, 100.0**2 + 7.0**2 + 30.0**2 + 50.0**2),
        "treatment": SampleMean(3, 75.0, 30.0**2 + 5.0**2 + 40.0**2),
    }
    at_150, windowed = store.metric_statistics("exp", metrics, [150, None], window=WINDOW)
    assert at_150[0] == {"control": SampleMean(1, 1.0, 1.0), "treatment": SampleMean(1, 10.0, 100.0)}
    assert windowed[0] == {"control": SampleMean(1, 3.0, 9.0), "treatment": SampleMean(2, 15.0, 125.0)}
    assert windowed[1] == {"control": Proportion(1, 1.0), "treatment": Proportion(2, 2.0)}


def test_interleaving_preferences_of_the_window(store: EventStore) -> None:
    # everything: a prefers B, b ties (1, 1), c prefers B, d has no click
    assert store.preference_counts("il", [None]) == [PreferenceCounts(4, 0, 2, 1, 2.0, 2.0)]
    # the window: a (first shown at 50) and d out, b's click at 210 out: b prefers A (d = -1), c B (d = +1)
    assert store.preference_counts("il", [125, None], window=WINDOW) == [
        PreferenceCounts(1, 0, 0, 0, 0.0, 0.0),  # as of 125: b, shown at 120, not clicked yet
        PreferenceCounts(2, 1, 1, 0, 0.0, 2.0),
    ]


def _pair(arms: tuple[str, ...]) -> tuple[Arm, Arm]:
    return Arm(*arms[:3]), Arm(*arms[3:])


def test_interleaving_arm_pairs_of_the_window(store: EventStore) -> None:
    """The pairs of the exposures rule 5 keeps: the old pair (a, d) was out of the window but was listed."""
    assert store.interleaving_arms("il") == [
        ArmsSeen(*_pair(OLD_ARMS), 3, 50, 250),
        ArmsSeen(*_pair(ARMS), 3, 120, 150),  # a2 (150), b1, c1
    ]
    # a (first shown at 50) and d (at 250) out; a2, shown in the window, too: a is not in the analysis
    assert store.interleaving_arms("il", window=WINDOW) == [ArmsSeen(*_pair(ARMS), 2, 120, 150)]
    # users first shown a list before 100 (a), their lists before 100 (a1 and its retry)
    old = _pair(OLD_ARMS)
    assert store.interleaving_arms("il", window=AnalysisWindow(None, 100)) == [ArmsSeen(*old, 2, 50, 60)]
    assert store.interleaving_arms("il", window=AnalysisWindow(200, None)) == [ArmsSeen(*old, 1, 250, 250)]
    assert store.interleaving_arms("il", window=AnalysisWindow(400, 500)) == []


def _config(window: dict[str, object]) -> AnalysisConfig:
    return AnalysisConfig.model_validate(
        {
            "metrics": [{"name": "revenue", "type": "mean", "event": "buy"}],
            "experiments": {"exp": window, "il": window},
            "timeline_points": 4,
        }
    )


def test_report_covers_the_window_and_says_so(store: EventStore) -> None:
    config = _config({"start": "1970-01-01T00:00:00.100Z", "end": 200})
    report = build_report(store, config, "exp").to_dict()
    assert report["analysis_window"] == {"start_ms": 100, "end_ms": 200}
    assert (report["start_ms"], report["end_ms"], report["total_users"]) == (100, 199, 3)
    assert {v["key"]: v["users"] for v in report["variants"]} == {"control": 1, "treatment": 2}
    assert [(p["variant"], p["users"]) for p in report["metrics"][0]["variants"]] == [
        ("control", 1), ("treatment", 2)
    ]  # fmt: skip
    assert report["metrics"][0]["variants"][1]["value"] == 7.5  # (10 + 5) / 2
    assert sum(p["new_users"] for p in report["traffic"]) == 3
    assert {p["time_ms"] for p in report["timeline"]} <= set(range(100, 200))
    text = format_report_table(report)
    assert "analysis window 1970-01-01T00:00:00.100Z .. 1970-01-01T00:00:00.200Z" in text
    summary = experiment_summary(store, config, "exp").to_dict()
    assert summary["total_users"] == 3 and summary["analysis_window"] == {"start_ms": 100, "end_ms": 200}
    interleaving = build_report(store, config, "il").to_dict()
    assert (interleaving["interleaving"]["users"], interleaving["total_users"]) == (2, 2)
    assert "analysis window" in format_report_table(interleaving)


def test_interleaving_report_names_the_arms_of_the_window(store: EventStore) -> None:
    """B was labelled with the model of the exposures before and after the window, with a warning that the
    arms changed, when every list in it came from one pair."""
    il = build_report(store, _config({"start": 100, "end": 200}), "il").to_dict()
    new_b = {"key": "b", "model_name": "model-b", "model_version": "1"}
    assert il["interleaving"]["arm_b"] == new_b and len(il["interleaving"]["arm_sets"]) == 1
    assert il["interleaving"]["arm_sets"][0]["exposures"] == 2
    text = format_report_table(il)
    assert "B = b: model-b v1" in text and "WARNING" not in text
    everything = build_report(store, _config({}), "il").to_dict()
    assert everything["interleaving"]["arm_b"]["model_version"] == "0"
    assert len(everything["interleaving"]["arm_sets"]) == 2 and "WARNING" in format_report_table(everything)
    # no list in the window: no pair, the arms still named by the experiment's (and no error)
    empty = build_report(store, _config({"start": 400, "end": 500}), "il").to_dict()
    assert empty["interleaving"]["arm_sets"] == [] and empty["interleaving"]["users"] == 0
    assert empty["interleaving"]["arm_b"]["model_version"] == "0" and empty["kind"] == "interleaving"


def test_report_without_a_window_covers_everything(store: EventStore) -> None:
    report = build_report(store, _config({}), "exp").to_dict()
    assert report["analysis_window"] is None and report["total_users"] == 7
    assert (report["start_ms"], report["end_ms"]) == (50, 300)
    assert "analysis window" not in format_report_table(report)


def _load(tmp_path: Path, settings: str) -> AnalysisConfig:
    path = tmp_path / "analysis.yaml"
    path.write_text(
        "metrics:\n  - name: revenue\n    type: mean\n    event: buy\nexperiments:\n  exp:\n" + settings
    )
    return load_analysis_config(path)


def test_config_reads_timestamps_with_a_timezone_and_epoch_milliseconds(tmp_path: Path) -> None:
    config = _load(tmp_path, "    start: 2024-05-01T00:00:00Z\n    end: '2024-05-15T02:00:00.5+02:00'\n")
    assert config.experiment("exp").window == AnalysisWindow(1714521600000, 1715731200500)
    assert _load(tmp_path, "    start: 1714521600000\n").experiment("exp").window == AnalysisWindow(
        1714521600000, None
    )
    assert config.experiment("other").window == ALL_TIME and not ALL_TIME.bounded


@pytest.mark.parametrize(
    ("settings", "line", "message"),
    [
        ("    start: 2024-05-01T00:00:00\n", 7,
         "experiments.exp.start: Value error, timestamp 2024-05-01T00:00:00 has no timezone"),
        ("    start: '2024-05-01 10:00'\n", 7,
         "experiments.exp.start: Value error, timestamp 2024-05-01T10:00:00 has no timezone"),
        ("    end: 2024-05-01\n", 7,
         "experiments.exp.end: Value error, date 2024-05-01 has no time and timezone"),
        ("    start: true\n", 7, "experiments.exp.start: Value error, expected an ISO 8601 timestamp"),
        ("    start: 1500.5\n", 7, "experiments.exp.start: Value error, expected an ISO 8601 timestamp"),
        ("    start: last week\n", 7, "experiments.exp.start: Value error, expected an ISO 8601 timestamp"),
        ("    start: -1\n", 7, "experiments.exp.start: Value error, epoch milliseconds must be >= 0"),
        ("    end: 18446744073709551616\n", 7,  # 2**64: ClickHouse failed the report on it
         "experiments.exp.end: Value error, epoch milliseconds must be at most 253402300799999"),
        ("    start: 2024-05-02T00:00:00Z\n    end: 2024-05-02T02:00:00+02:00\n", 8,
         "experiments.exp.end: Value error, end 2024-05-02T00:00:00.000Z is not after start "
         "2024-05-02T00:00:00.000Z"),
        ("    start: 200\n    end: 100\n", 8,
         "experiments.exp.end: Value error, end 1970-01-01T00:00:00.100Z is not after"),
    ],
)  # fmt: skip
def test_config_refuses_bad_window_bounds_naming_file_line_and_key(
    tmp_path: Path, settings: str, line: int, message: str
) -> None:
    with pytest.raises(MetricConfigError) as error:
        _load(tmp_path, settings)
    assert f"{tmp_path / 'analysis.yaml'}:{line}: {message}" in str(error.value)
