"""Reports built from the real in-memory event store: every number traced back to the engine."""

from __future__ import annotations

import json

import pytest
from scipy import special

from analytics import text_format
from analytics.metrics import AnalysisConfig, aggregate
from analytics.report import (
    MetricReport,
    analyse_metrics,
    build_report,
    experiment_summary,
    format_report_table,
    traffic_bucket_ms,
)
from analytics.stats import messages
from analytics.stats.frequentist.tests import TTest
from analytics.stats.models.settings import FrequentistConfig
from analytics.stats.multiple_testing import adjust_p_values
from analytics.stats.srm import srm_p_value
from analytics.store import ExposureRow, MemoryEventStore, OutcomeRow
from tests.analytics.stats.chosen_p_values import arms_with_p_values
from tests.analytics.stats.simulated_events import START_MS, simulate_experiment

METRICS = [
    {"name": "conversion", "type": "binomial", "event": "click"},
    {
        "name": "ctr",
        "type": "ratio",
        "numerator": "click",
        "denominator": "impression",
        "aggregation": "count",
    },
    {
        "name": "watch",
        "type": "continuous",
        "event": "watch",
        "cuped": True,
        "winsorize": {"upper_quantile": 0.99},
    },
    {"name": "impressions", "type": "count", "event": "impression", "guardrail": True},
]


def config(**overrides) -> AnalysisConfig:
    return AnalysisConfig.model_validate({"metrics": METRICS, "timeline_points": 4, **overrides})


@pytest.fixture(scope="module")
def store() -> MemoryEventStore:
    store = MemoryEventStore()
    simulate_experiment(store, "exp", users=1500, seed=11)
    simulate_experiment(store, "three", users=900, seed=12, variants=("a", "b", "c"), weights=(1, 1, 1),
                        click_rate=(0.1, 0.1, 0.1), watch_scale=(10.0, 10.0, 10.0))  # fmt: skip
    return store


def test_report_numbers_come_from_the_engine(store: MemoryEventStore) -> None:
    cfg = config()
    report = build_report(store, cfg, "exp")
    assert report.control == "control"
    counts = store.variant_counts("exp")
    assert {v.key: v.users for v in report.variants} == counts
    assert report.srm.p_value == pytest.approx(srm_p_value(list(counts.values()), [0.5, 0.5]))
    p_values = []
    for metric_report, definition in zip(report.metrics, cfg.metrics, strict=True):
        stats = aggregate(definition, store, "exp")
        expected = TTest(stats["control"], stats["treatment"], FrequentistConfig()).compute_result()
        control_row, treatment_row = metric_report.variants
        assert control_row.is_control and control_row.relative_lift is None
        assert treatment_row.relative_lift.estimate == pytest.approx(expected.estimate, rel=1e-12)
        assert treatment_row.relative_lift.ci == pytest.approx(expected.ci, rel=1e-12)
        assert treatment_row.p_value == pytest.approx(expected.p_value, rel=1e-12)
        assert treatment_row.value == pytest.approx(expected.treatment_mean)
        assert control_row.value == pytest.approx(expected.control_mean)
        p_values.append(expected.p_value)
    # Holm over the three goal metrics; the guardrail (impressions) keeps its own p-value
    adjusted = [*adjust_p_values(p_values[:3], "holm"), p_values[3]]
    rows = [m.variants[1] for m in report.metrics]
    assert [r.adjusted_p_value for r in rows] == pytest.approx(adjusted)
    assert [r.significant for r in rows] == [p < 0.05 for p in adjusted]
    assert [m.corrected for m in report.metrics] == [True, True, True, False]
    assert report.correction_family_size == 3
    # The simulated treatment clicks 30 % more per impression and watches 10 % longer; impressions are unchanged.
    assert rows[1].significant and rows[2].significant and not rows[3].significant
    assert report.metrics[3].guardrail and report.metrics[2].cuped


def test_cuped_value_is_adjusted_and_unadjusted_is_raw(store: MemoryEventStore) -> None:
    watch = build_report(store, config(), "exp", with_timeline=False).metrics[2]
    raw = aggregate(config().metrics[2], store, "exp")
    for row in watch.variants:
        assert row.unadjusted_value == pytest.approx(raw[row.variant].post.mean)
        assert row.value != row.unadjusted_value


def test_timeline_and_traffic(store: MemoryEventStore) -> None:
    report = build_report(store, config(), "exp")
    start, end = store.time_range("exp")
    assert (report.start_ms, report.end_ms) == (start, end)
    times = sorted({p.time_ms for p in report.timeline})
    assert len(times) == 4 and times[-1] == end
    assert len(report.timeline) == 4 * len(METRICS)
    last = {p.metric: p for p in report.timeline if p.time_ms == end}
    for metric_report in report.metrics:
        row = metric_report.variants[1]
        assert last[metric_report.name].estimate == pytest.approx(row.relative_lift.estimate)
        assert last[metric_report.name].users == row.users
    users = [p.users for p in report.timeline if p.metric == "ctr"]
    assert users == sorted(users)
    assert report.traffic_bucket_ms == traffic_bucket_ms(start, end) == 1_800_000
    final = {}
    for point in report.traffic:
        final[point.variant] = point.cumulative_users
    assert final == store.variant_counts("exp")


def test_timeline_can_be_switched_off(store: MemoryEventStore) -> None:
    report = build_report(store, config(timeline_points=0), "exp")
    assert report.timeline == [] and report.traffic


def test_three_variants_are_all_corrected_together(store: MemoryEventStore) -> None:
    """Both treatments of every goal metric in one family (3 metrics x 2 = 6); the guardrail's 2 outside it."""
    report = build_report(store, config(correction="bh"), "three", with_timeline=False)
    assert report.control == "a"
    rows = [r for m in report.metrics if not m.guardrail for r in m.variants if not r.is_control]
    assert len(rows) == 2 * (len(METRICS) - 1) == report.correction_family_size
    assert [r.adjusted_p_value for r in rows] == pytest.approx(
        adjust_p_values([r.p_value for r in rows], "bh")
    )
    guardrail = [r for r in report.metrics[3].variants if not r.is_control]
    assert [r.adjusted_p_value for r in guardrail] == [r.p_value for r in guardrail]


def test_srm_flag_uses_configured_weights(store: MemoryEventStore) -> None:
    cfg = config(experiments={"exp": {"weights": {"control": 0.8, "treatment": 0.2}, "status": "stopped"}})
    summary = experiment_summary(store, cfg, "exp")
    assert summary.srm.flagged and summary.status == "stopped"
    assert [v.expected_share for v in summary.variants] == [0.8, 0.2]


def test_sequential_mode_widens_intervals(store: MemoryEventStore) -> None:
    fixed = build_report(store, config(), "exp", with_timeline=False)
    seq = build_report(store, config(sequential=True), "exp", with_timeline=False)
    for f, s in zip(fixed.metrics, seq.metrics, strict=True):
        fr, sr = f.variants[1], s.variants[1]
        assert sr.sequential and not fr.sequential
        assert (
            sr.relative_lift.ci[1] - sr.relative_lift.ci[0] > fr.relative_lift.ci[1] - fr.relative_lift.ci[0]
        )
        assert sr.p_value >= fr.p_value


def test_thin_variant_reports_an_error_code() -> None:
    store = MemoryEventStore()
    simulate_experiment(store, "exp", users=200, seed=1)
    store.apply([ExposureRow("x1", "exp", "lonely", "lonely-user", START_MS)], [], {})
    report = build_report(store, config(), "exp")
    lonely = [r for r in report.metrics[0].variants if r.variant == "lonely"][0]
    assert lonely.error == messages.NO_UNITS and lonely.adjusted_p_value is None and not lonely.significant
    json.dumps(report.to_dict(), allow_nan=False)


def test_unknown_experiment() -> None:
    with pytest.raises(KeyError, match="unknown experiment"):
        build_report(MemoryEventStore(), config(), "nope")


def test_text_table_prints_names_from_events_as_plain_text() -> None:
    """Experiment and variant keys come from Kafka events: a terminal escape sequence, carriage return or
    newline in one is printed escaped, never sent to the analyst's terminal, and every row stays one line."""
    store = MemoryEventStore()
    key = "exp\x1b]0;pwned\x07"
    simulate_experiment(store, key, users=200, seed=3, variants=("control", "t\x1b[2J\r\nforged row"))
    table = format_report_table(build_report(store, config(), key).to_dict())
    assert all(line.isprintable() for line in table.splitlines())
    assert "experiment exp\\x1b]0;pwned\\x07 (running)" in table
    assert "t\\x1b[2J\\r\\nforged row: " in table
    rows = [line for line in table.splitlines() if line.startswith("  t\\x1b")]
    assert len(rows) == len(METRICS) and not any(line.startswith("forged row") for line in table.splitlines())


def test_text_table_columns_never_run_together() -> None:
    """A number as wide as its column (absolute lifts of a metric in tiny units) stays apart from the next
    one: each treatment row reads back as its nine fields, equal to the JSON report's."""
    store = MemoryEventStore()
    exposures = [
        ExposureRow(f"x{i}", "exp", ("control", "treatment")[i % 2], f"u{i}", START_MS) for i in range(400)
    ]
    outcomes = [
        OutcomeRow(
            f"o{i}", f"u{i}", "dose", START_MS + 1, (3e-9 if i % 2 == 0 else 6e-9) * (1 + (i % 7) / 10)
        )
        for i in range(400)
    ]
    store.apply(exposures, outcomes, {})
    cfg = AnalysisConfig.model_validate(
        {"metrics": [{"name": "dose", "type": "mean", "event": "dose"}], "difference_type": "absolute"}
    )
    report = build_report(store, cfg, "exp").to_dict()
    row = report["metrics"][0]["variants"][1]
    lift = row["absolute_lift"]
    line = next(line for line in format_report_table(report).splitlines() if line.startswith("  treatment"))
    variant, users, value, estimate, low, high, p, p_adjusted, mark = line.split()
    assert (variant, int(users), mark) == ("treatment", 200, "yes")
    assert float(value) == pytest.approx(row["value"], rel=1e-4)
    assert float(estimate) == pytest.approx(lift["estimate"], rel=1e-3)
    assert [float(low.strip("[,")), float(high.rstrip("]"))] == pytest.approx(lift["ci"], rel=1e-3)
    assert (p, p_adjusted) == ("<0.0001", "<0.0001")


def test_text_table_gives_no_srm_verdict_without_a_test() -> None:
    """One variant: the SRM check cannot run, so the header says n/a, not "n/a ok"."""
    store = MemoryEventStore()
    simulate_experiment(store, "solo", users=50, seed=5, variants=("control",), weights=(1.0,))
    header = format_report_table(build_report(store, config(), "solo").to_dict()).splitlines()[0]
    assert header.endswith("50 users, SRM n/a")


def _without(report: dict, variant: str) -> list[list[dict]]:
    """Every metric's rows of ``report`` except ``variant``'s."""
    return [[row for row in metric["variants"] if row["variant"] != variant] for metric in report["metrics"]]


def test_a_variant_without_users_has_no_value_and_leaves_the_others_unchanged(
    store: MemoryEventStore,
) -> None:
    """A configured variant nobody was exposed to had the value 0.0 (a conversion of 0 among no users) and,
    on a CUPED metric, the pooled adjustment alone (7.3 watch seconds for nobody): a mean over no users is
    null, and so are its lifts, p-values and chance to win; the other variants' figures are those of the
    report without it."""
    weights = {"control": 1.0, "treatment": 1.0, "empty": 1.0}
    with_empty = build_report(store, config(experiments={"exp": {"weights": weights}}), "exp").to_dict()
    without = build_report(store, config(), "exp").to_dict()
    assert [m["cuped"] for m in with_empty["metrics"]] == [False, False, True, False]  # the case at hand
    for metric in with_empty["metrics"]:
        (empty,) = [row for row in metric["variants"] if row["variant"] == "empty"]
        assert (empty["users"], empty["value"], empty["unadjusted_value"]) == (0, None, None), metric["name"]
        absent = ("absolute_lift", "relative_lift", "p_value", "adjusted_p_value", "chance_to_win")
        assert all(empty[field] is None for field in absent), (metric["name"], empty)
        assert empty["error"] == messages.NO_UNITS and not empty["significant"]
    for ours, reference in zip(_without(with_empty, "empty"), _without(without, "empty"), strict=True):
        assert ours == reference
    text = format_report_table(with_empty)
    empty_lines = [line.split()[:3] for line in text.splitlines() if line.startswith("  empty")]
    assert empty_lines == [["empty", "0", "-"]] * len(METRICS)


def test_an_experiment_without_users_has_no_observed_shares(store: MemoryEventStore) -> None:
    """An analysis window in which no user was first exposed: each variant's observed share was 0.0, shares
    of nobody that summed to 0; they are null (printed "-"), while a variant without users beside others keeps
    its true share, 0.0."""
    weights = {"control": 1.0, "treatment": 1.0, "empty": 1.0}
    later = START_MS + 10 * 24 * 3_600_000  # after every exposure of the simulation
    nobody = config(experiments={"exp": {"weights": weights, "start": later}})
    report = build_report(store, nobody, "exp").to_dict()
    assert report["total_users"] == 0
    assert [(v["key"], v["users"], v["observed_share"]) for v in report["variants"]] == [
        ("control", 0, None),
        ("empty", 0, None),
        ("treatment", 0, None),
    ]
    assert format_report_table(report).splitlines()[2] == "  control: 0 (-), empty: 0 (-), treatment: 0 (-)"
    assert experiment_summary(store, nobody, "exp").to_dict()["variants"] == report["variants"]
    some = experiment_summary(store, config(experiments={"exp": {"weights": weights}}), "exp")
    shares = {v.key: v.observed_share for v in some.variants}
    assert shares["empty"] == 0.0 and sum(shares.values()) == pytest.approx(1.0)


def test_a_control_without_users_has_no_value() -> None:
    """The control nobody was exposed to showed the mean of its comparisons' empty arm, 0.0."""
    store = MemoryEventStore()
    simulate_experiment(store, "exp", users=200, seed=2)
    settings = {"control": "nobody", "weights": {"nobody": 1.0, "control": 1.0, "treatment": 1.0}}
    report = build_report(store, config(experiments={"exp": settings}), "exp")
    for metric in report.metrics:
        rows = {row.variant: row for row in metric.variants}
        nobody = rows["nobody"]
        assert nobody.is_control and (nobody.value, nobody.unadjusted_value) == (None, None)
        assert rows["treatment"].value is not None and rows["treatment"].error == messages.NO_UNITS


def test_every_error_code_travels_with_its_message() -> None:
    """The JSON carried only codes (NO_UNITS, BASELINE_ZERO): each row with one has the message the text table
    prints, taken from analytics.stats.messages; a row without one has none."""
    store = MemoryEventStore()
    simulate_experiment(store, "exp", users=200, seed=1)
    store.apply([ExposureRow("x1", "exp", "lonely", "lonely-user", START_MS)], [], {})
    report = build_report(store, config(), "exp").to_dict()
    rows = [row for metric in report["metrics"] for row in metric["variants"]]
    assert {row["error"] for row in rows} == {None, messages.NO_UNITS}
    for row in rows:
        expected = messages.MESSAGES[row["error"]] if row["error"] else None
        assert row["error_message"] == expected, row
    assert f"NO_UNITS: {messages.MESSAGES['NO_UNITS']}" in format_report_table(report)


def five_goals_and_a_guardrail(correction: str) -> list[MetricReport]:
    """Five goal metrics whose treatment p-values are 0.03, 0.2, 0.4, 0.6, 0.8, and a guardrail at p = 0.02."""
    goals = [{"name": f"goal{i}", "type": "mean", "event": f"goal{i}"} for i in range(5)]
    guardrail = {"name": "items", "type": "mean", "event": "items", "guardrail": True}
    cfg = AnalysisConfig.model_validate(
        {"metrics": [*goals, guardrail], "difference_type": "absolute", "correction": correction}
    )
    statistics = [arms_with_p_values({"treatment": p}) for p in (0.03, 0.2, 0.4, 0.6, 0.8, 0.02)]
    return analyse_metrics(cfg, cfg.metrics, statistics, "control")


@pytest.mark.parametrize(("correction", "adjusted"), [("none", 0.03), ("holm", 0.15), ("bh", 0.15)])
def test_a_correction_decides_significance_and_the_interval_agrees(correction: str, adjusted: float) -> None:
    """p = 0.03, the smallest of five goal metrics, is significant alone and 0.15 after Holm (0.03 * 5) or BH
    (0.03 * 5 / 1): not significant. Its adjusted interval is the same t test's at 0.05 * 0.03 / 0.15 = 0.01,
    which contains 0, while the unadjusted 95 % one (still ``ci``) does not. The guardrail (p = 0.02) is left
    out of the family: unadjusted, significant."""
    metrics = five_goals_and_a_guardrail(correction)
    row = metrics[0].variants[1]
    lift = row.absolute_lift
    assert row.p_value == pytest.approx(0.03, rel=1e-9) and lift.ci[0] > 0
    assert row.adjusted_p_value == pytest.approx(adjusted, rel=1e-9)
    assert row.significant is (correction == "none")
    level = 0.05 if correction == "none" else 0.01
    half_width = special.stdtrit(1998, 1 - level / 2) * lift.se
    assert row.adjusted_ci == pytest.approx(
        (lift.estimate - half_width, lift.estimate + half_width), rel=1e-9
    )
    assert (row.adjusted_ci[0] > 0) is row.significant
    guardrail = metrics[5].variants[1]
    assert guardrail.adjusted_p_value == guardrail.p_value == pytest.approx(0.02, rel=1e-9)
    assert guardrail.significant and guardrail.adjusted_ci == guardrail.absolute_lift.ci
    assert [m.corrected for m in metrics] == [correction != "none"] * 5 + [False]


def test_text_table_shows_the_correction_and_the_intervals_that_agree_with_it(
    store: MemoryEventStore,
) -> None:
    """The header names the correction, its family and that guardrails stay out of it; the ci column holds each
    row's adjusted interval (the one the verdict agrees with: wider than ``ci`` where Holm raised the
    p-value)."""
    report = build_report(store, config(correction="holm"), "exp", with_timeline=False).to_dict()
    lines = format_report_table(report).splitlines()
    assert lines[1] == (
        "alpha 0.05, correction holm over 3 goal comparisons, guardrails uncorrected, fixed horizon"
    )
    titles = [line for line in lines if line.lstrip().startswith("variant")]
    assert len(titles) == 4 and all(line.split()[4:6] == ["ci", "holm"] for line in titles)
    blocks = [line.split(" [")[0] for line in lines if line.endswith("]") and not line.startswith(" ")]
    assert blocks == ["conversion", "ctr", "watch", "impressions"]
    assert "impressions [count, guardrail]" in lines
    treatment_lines = [line for line in lines if line.startswith("  treatment")]
    for metric, line in zip(report["metrics"], treatment_lines, strict=True):
        row = metric["variants"][1]
        assert text_format.interval(row["adjusted_ci"], "+.2%") in line, metric["name"]
        if row["adjusted_p_value"] > row["p_value"]:
            assert row["adjusted_ci"][0] < row["relative_lift"]["ci"][0], metric["name"]
    untouched = format_report_table(build_report(store, config(correction="none"), "exp").to_dict())
    assert "correction none, fixed horizon" in untouched and "uncorrected" not in untouched
