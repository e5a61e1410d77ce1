"""Reports of interleaving experiments: built from the store's preference counts and the statistics engine, the same
over the JSON API and the CLI, next to the A/B experiments they share a store with."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from analytics.__main__ import main
from analytics.interleaving import Arm
from analytics.metrics import AnalysisConfig
from analytics.report import build_report, experiment_summary, format_report_table
from analytics.server import AnalyticsServer
from analytics.stats import messages
from analytics.stats.interleaving import InterleavingConfig, analyze_interleaving
from analytics.store import DuckDBEventStore, ExposureRow, MemoryEventStore, open_store
from analytics.store.base import InterleavedRow, ItemOutcomeRow
from tests.analytics.simulated_interleaving import ARMS, simulate_interleaving
from tests.analytics.stats.simulated_events import simulate_experiment

EXAMPLE = Path(__file__).parents[2] / "analytics" / "examples" / "metrics.yaml"
METRICS = [{"name": "conversion", "type": "binomial", "event": "click"}]


def config(**overrides) -> AnalysisConfig:
    return AnalysisConfig.model_validate({"metrics": METRICS, "timeline_points": 5, **overrides})


@pytest.fixture(scope="module")
def store() -> MemoryEventStore:
    store = MemoryEventStore()
    simulate_interleaving(store, "il", users=800, seed=3, click_prob=(0.04, 0.07))
    simulate_experiment(store, "ab", users=500, seed=4)
    return store


def test_report_numbers_come_from_the_statistics_engine(store: MemoryEventStore) -> None:
    for cfg in (config(), config(sequential=True), config(alpha=0.01)):
        report = build_report(store, cfg, "il")
        il = report.interleaving
        assert report.kind == "interleaving" and report.metrics == [] and report.timeline == []
        assert report.control is None and [(v.key, v.users, v.is_control) for v in report.variants] == [
            ("interleaved", 800, False)
        ]
        assert report.srm.p_value is None and not report.srm.flagged
        counts = store.preference_counts("il", [None])[0]
        expected = analyze_interleaving(counts, InterleavingConfig(cfg.alpha, cfg.sequential))
        assert (il.users, il.users_with_clicks, il.wins_a, il.wins_b, il.ties) == (
            counts.n, counts.clicked, counts.wins_a, counts.wins_b, counts.ties
        )  # fmt: skip
        for shown, test in ((il.preference, expected.sign_test), (il.credit, expected.credit_test)):
            assert (shown.estimate, shown.ci, shown.p_value, shown.error) == (
                test.estimate, test.ci, test.p_value, test.error
            )  # fmt: skip
            assert shown.significant == (test.p_value < cfg.alpha)
        assert il.sequential is cfg.sequential
        assert (il.arm_a, il.arm_b) == (Arm(*ARMS[0]), Arm(*ARMS[1])) and len(il.arm_sets) == 1
    # B's items are clicked 75 % more often: users prefer B, and both tests see it.
    report = build_report(store, config(), "il").interleaving
    assert report.preferred == "B" and report.preference.estimate > 0 and report.credit.significant


def test_the_timeline_follows_the_preference_as_of_each_cut(store: MemoryEventStore) -> None:
    report = build_report(store, config(), "il")
    start, end = store.time_range("il")
    points = report.interleaving.timeline
    assert [p.time_ms for p in points][-1] == end and len(points) == 5
    cuts = [p.time_ms for p in points]
    counts = store.preference_counts("il", [*cuts[:-1], None])
    assert [(p.users, p.users_with_clicks, p.wins_a, p.wins_b, p.ties) for p in points] == [
        (c.n, c.clicked, c.wins_a, c.wins_b, c.ties) for c in counts
    ]
    assert [p.users for p in points] == sorted(p.users for p in points)
    assert points[-1].estimate == report.interleaving.preference.estimate
    assert report.traffic and report.traffic[-1].cumulative_users == 800
    assert build_report(store, config(timeline_points=0), "il").interleaving.timeline == []
    assert build_report(store, config(), "il", with_timeline=False).interleaving.timeline == []


def test_a_b_experiments_next_to_it_are_unchanged(store: MemoryEventStore) -> None:
    ab = build_report(store, config(), "ab")
    assert ab.kind == "ab" and ab.interleaving is None and ab.metrics and ab.control == "control"
    assert experiment_summary(store, config(), "ab").kind == "ab"
    summary = experiment_summary(store, config(), "il")
    assert (summary.kind, summary.control, summary.total_users) == ("interleaving", None, 800)


def test_no_clicks_and_changed_arms_are_reported_not_raised() -> None:
    store = MemoryEventStore()
    rows = [
        InterleavedRow(f"e{i}", "il", f"u{i}", f"r{i}", 10 + i, [1, 2], [0, 1], *ARMS[0], *ARMS[1])
        for i in range(3)
    ]
    rows.append(rows[0]._replace(event_id="late", request_id="r9", event_time_ms=99, arm_b_version="2"))
    store.apply([ExposureRow(r.event_id, "il", "interleaved", r.user_id, r.event_time_ms) for r in rows], [], {},
                interleaved=rows)  # fmt: skip
    report = build_report(store, config(), "il")
    il = report.interleaving
    assert il.preference.error == messages.NO_CLICKS and il.credit.error == messages.ZERO_VARIANCE
    assert il.preferred is None and [s.exposures for s in il.arm_sets] == [3, 1]
    text = format_report_table(report.to_dict())
    assert "WARNING: the arms changed while it ran (2 pairs of models)" in text
    assert "NO_CLICKS: no user has a credited click yet" in text
    json.dumps(report.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    ("users", "code", "explanation"),
    [(1, messages.NO_UNITS, "fewer than 2 users"), (5, messages.ZERO_VARIANCE, "the same credit difference")],
)
def test_the_text_explains_test_errors_in_terms_of_users(users: int, code: str, explanation: str) -> None:
    """One user, or users who each clicked one item of A: the credit test cannot run, and the text says why
    in interleaving terms, not with the A/B texts ("an arm has fewer than 2 units", "the lift has zero
    variance")."""
    store = MemoryEventStore()
    rows = [InterleavedRow(f"e{i}", "il", f"u{i}", f"r{i}", 10 + i, [1, 2], [0, 1], *ARMS[0], *ARMS[1])
            for i in range(users)]  # fmt: skip
    clicks = [ItemOutcomeRow(f"c{i}", f"u{i}", f"r{i}", 1, "click", 20 + i) for i in range(users)]
    exposures = [ExposureRow(r.event_id, "il", "interleaved", r.user_id, r.event_time_ms) for r in rows]
    store.apply(exposures, [], {}, interleaved=rows, item_outcomes=clicks)
    report = build_report(store, config(), "il")
    assert report.interleaving.credit.error == code and report.interleaving.wins_a == users
    text = format_report_table(report.to_dict())
    assert f"{code}: " in text and explanation in text
    assert "arm has fewer than 2 units" not in text and "lift" not in text


@pytest.mark.parametrize("engine", ["duckdb", "chdb"])
def test_the_warehouse_engines_report_what_the_reference_reports(
    store: MemoryEventStore, engine: str, tmp_path: Path
) -> None:
    """The whole report, timeline included, from the SQL aggregation on DuckDB and on ClickHouse (chDB) equals the
    in-memory reference store's, fixed-horizon and sequential, next to an A/B experiment in the same tables."""
    with DuckDBEventStore(tmp_path / "events") if engine == "duckdb" else open_store("chdb://") as warehouse:
        simulate_interleaving(warehouse, "il", users=800, seed=3, click_prob=(0.04, 0.07))
        simulate_experiment(warehouse, "ab", users=500, seed=4)
        for cfg in (config(), config(sequential=True)):
            found, expected = build_report(warehouse, cfg, "il").to_dict(), build_report(store, cfg, "il").to_dict()
            found.pop("generated_at_ms"), expected.pop("generated_at_ms")
            assert found == expected and len(found["interleaving"]["timeline"]) == 5


def test_cli_prints_the_interleaving_report_from_the_duckdb_store(tmp_path: Path, capsys) -> None:
    db = tmp_path / "events"
    with DuckDBEventStore(db) as store:
        simulate_interleaving(store, "ranking-interleave", users=400, seed=5, click_prob=(0.05, 0.08))
        expected = build_report(store, config(), "ranking-interleave").to_dict()["interleaving"]
    assert main(["report", "ranking-interleave", "--store", str(db), "--metrics", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "experiment ranking-interleave (running), interleaving, 400 users" in out
    assert "A = control: mmoe v1" in out and "B = treatment: mmoe+dml v1" in out
    assert (
        f"users preferring A {expected['wins_a']}, tied {expected['ties']}, preferring B {expected['wins_b']}"
        in out
    )
    assert (
        f"{expected['preference']['estimate']:+.2%}" in out
        and f"{expected['credit']['estimate']:+.4f}" in out
    )
    assert (
        main(["report", "ranking-interleave", "--store", str(db), "--metrics", str(EXAMPLE), "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "interleaving" and report["interleaving"]["users"] == 400
    assert report["interleaving"]["timeline"]  # --json carries the timeline


def test_click_metric_is_configurable() -> None:
    store = MemoryEventStore()
    simulate_interleaving(store, "il", users=200, seed=6)
    assert (
        build_report(
            store, config(interleaving={"click_metric": "purchase"}), "il"
        ).interleaving.users_with_clicks
        == 0
    )
    with pytest.raises(ValueError, match="interleaving.typo"):
        AnalysisConfig.model_validate({"metrics": METRICS, "interleaving": {"typo": 1}})


@pytest.mark.integration
def test_the_json_api_serves_the_same_report(store: MemoryEventStore) -> None:
    with AnalyticsServer(store, config(), port=0, cache_seconds=60) as server:
        listing = json.loads(urllib.request.urlopen(f"{server.url}/api/experiments", timeout=10).read())
        assert {e["experiment_key"]: e["kind"] for e in listing} == {"ab": "ab", "il": "interleaving"}
        served = json.loads(
            urllib.request.urlopen(f"{server.url}/api/experiments/il/report", timeout=10).read()
        )
    direct = build_report(store, config(), "il").to_dict()
    served.pop("generated_at_ms"), direct.pop("generated_at_ms")
    assert served == direct


def test_text_table_prints_arm_names_from_events_as_plain_text() -> None:
    """The arms' keys, model names and versions come from Kafka events: printed escaped, one line each."""
    store = MemoryEventStore()
    arms = (("control", "mmoe\x1b[2J", "1\r"), ("treatment\n", "dml", "2"))
    simulate_interleaving(store, "il\x1b[0m", users=300, seed=8, click_prob=(0.02, 0.2), arms=arms)
    lines = format_report_table(build_report(store, config(), "il\x1b[0m").to_dict()).splitlines()
    assert all(line.isprintable() for line in lines)
    assert lines[0].startswith("experiment il\\x1b[0m (running), interleaving, 300 users")
    assert lines[2:4] == ["  A = control: mmoe\\x1b[2J v1\\r", "  B = treatment\\n: dml v2"]
    assert lines[-1] == "  users prefer B (treatment\\n: dml v2)"


def test_test_errors_travel_with_their_interleaving_message(store: MemoryEventStore) -> None:
    """The JSON carried only the code (NO_CLICKS, ZERO_VARIANCE): each test has the interleaving text of its
    code, the one the text table prints (none without an error)."""
    quiet = MemoryEventStore()
    rows = [InterleavedRow(f"e{i}", "il", f"u{i}", f"r{i}", 10 + i, [1, 2], [0, 1], *ARMS[0], *ARMS[1])
            for i in range(3)]  # fmt: skip
    exposures = [ExposureRow(r.event_id, "il", "interleaved", r.user_id, r.event_time_ms) for r in rows]
    quiet.apply(exposures, [], {}, interleaved=rows)
    il = build_report(quiet, config(), "il").to_dict()["interleaving"]
    for name, code in (("preference", messages.NO_CLICKS), ("credit", messages.ZERO_VARIANCE)):
        assert (il[name]["error"], il[name]["error_message"]) == (code, messages.INTERLEAVING_MESSAGES[code])
    answered = build_report(store, config(), "il").to_dict()["interleaving"]
    assert answered["preference"]["error"] is None and answered["preference"]["error_message"] is None
