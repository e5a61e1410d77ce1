"""Experiment reports: the JSON schema the dashboard reads, built from the event store and the metric config.

The dataclasses below are the schema of ``GET /api/experiments/<key>/report`` (``ExperimentReport``) and of
each entry of ``GET /api/experiments`` (``ExperimentSummary``); ``to_dict()`` gives the JSON (tuples become
lists, missing numbers are null). Lifts are fractions (0.05 = +5 %) for relative and metric units for
absolute; times are milliseconds since the Unix epoch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from analytics import text_format
from analytics.analysis_window import AnalysisWindow
from analytics.interleaving_report import InterleavingReport, format_interleaving_table, interleaving_report
from analytics.metrics import AnalysisConfig, EventStore, MetricDefinition
from analytics.stats.analysis import AnalysisSettings, Comparison, Corrected, compare_to_control, correct
from analytics.stats.messages import MESSAGES
from analytics.stats.models.results import FrequentistResult
from analytics.stats.models.statistics import CupedMean, Proportion, Ratio, SampleMean, TestStatistic
from analytics.stats.srm import srm_flagged, srm_p_value

logger = logging.getLogger(__name__)

_NICE_BUCKETS_MS = [
    1_000,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
    900_000,
    1_800_000,
    3_600_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    604_800_000,
]


@dataclass(frozen=True)
class Lift:
    """A lift with its interval (the sequential confidence sequence when ``sequential`` is on)."""

    estimate: float | None
    ci: tuple[float, float] | None
    se: float | None
    p_value: float | None

    @classmethod
    def from_result(cls, result: FrequentistResult) -> Lift:
        return cls(estimate=result.estimate, ci=result.ci, se=result.se, p_value=result.p_value)


@dataclass(frozen=True)
class VariantMetricResult:
    """One variant on one metric. Lift fields are null for the control row.

    ``value`` is the variant's metric value (CUPED-adjusted when the metric uses CUPED, see
    ``unadjusted_value``); both are null for a variant without users (a mean over nobody is undefined), whose
    lifts, p-values and chance to win are null too. ``p_value`` belongs to the report's ``difference_type``;
    ``significant`` means ``adjusted_p_value < alpha``. ``error`` is a code of ``analytics.stats.messages``
    (null: none) and ``error_message`` its text.

    ``adjusted_p_value`` is ``p_value`` after the report's ``correction`` where the metric is ``corrected``
    (a goal metric), else ``p_value`` itself (a guardrail, or correction none). ``adjusted_ci`` is the
    difference_type lift's interval at the level where it agrees with ``adjusted_p_value`` (it excludes 0
    exactly when the row is significant): alpha * p / p_adj in place of alpha
    (``analytics.stats.multiple_testing.interval_levels``); the lift's ``ci`` stays the unadjusted one.
    """

    variant: str
    is_control: bool
    users: int
    value: float | None
    unadjusted_value: float | None
    absolute_lift: Lift | None = None
    relative_lift: Lift | None = None
    p_value: float | None = None
    p_value_greater: float | None = None
    p_value_less: float | None = None
    adjusted_p_value: float | None = None
    adjusted_ci: tuple[float, float] | None = None
    significant: bool = False
    sequential: bool = False
    chance_to_win: float | None = None
    error: str | None = None
    error_message: str | None = None


def _error_message(code: str | None) -> str | None:
    """The text of an error code, so the JSON says what went wrong, not only which code."""
    return None if code is None else MESSAGES.get(code, code)


@dataclass(frozen=True)
class MetricReport:
    """All variants of one metric; ``corrected``: its p-values are in the report's correction family (a goal
    metric while a correction is on; guardrails never are, see ``analyse_metrics``)."""

    name: str
    type: str
    description: str
    guardrail: bool
    inverse: bool
    cuped: bool
    variants: list[VariantMetricResult]
    corrected: bool = False


@dataclass(frozen=True)
class VariantSummary:
    """Users of one variant against its configured share. ``observed_share`` is null while the experiment has
    no users at all (a share of nobody is undefined; 0.0 said the variant got none of some traffic)."""

    key: str
    is_control: bool
    users: int
    expected_share: float
    observed_share: float | None


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio-mismatch check; ``p_value`` is null with fewer than two variants or no users.

    Users in a variant whose configured weight is 0 (or that the config does not list) give p = 0: traffic
    went where the assignment never sends it.
    """

    p_value: float | None
    flagged: bool
    threshold: float


@dataclass(frozen=True)
class TimelinePoint:
    """Cumulative lift of one variant on one metric over all data up to ``time_ms``."""

    time_ms: int
    metric: str
    variant: str
    users: int
    estimate: float | None
    ci: tuple[float, float] | None
    p_value: float | None


@dataclass(frozen=True)
class TrafficPoint:
    """New and cumulative exposed users of one variant in the bucket starting at ``bucket_start_ms``."""

    bucket_start_ms: int
    variant: str
    new_users: int
    cumulative_users: int


@dataclass(frozen=True)
class WindowReport:
    """The analysis window of the config (``experiments.<key>.start`` / ``end``): the report covers the users first
    exposed in ``[start_ms, end_ms)`` and their outcomes before ``end_ms``; a null bound is open."""

    start_ms: int | None
    end_ms: int | None

    @classmethod
    def of(cls, window: AnalysisWindow) -> WindowReport | None:
        """The window as reported (None when the config sets none: the report covers everything)."""
        return cls(window.start_ms, window.end_ms) if window.bounded else None


@dataclass(frozen=True)
class ExperimentSummary:
    """One row of the experiment list; ``kind`` is "ab" or "interleaving" (one variant, "interleaved")."""

    experiment_key: str
    status: str
    control: str | None
    total_users: int
    variants: list[VariantSummary]
    srm: SrmResult
    kind: str = "ab"
    analysis_window: WindowReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class ExperimentReport:
    """Everything the dashboard shows for one experiment.

    ``kind`` "interleaving": ``interleaving`` holds the analysis, ``metrics`` and ``timeline`` are empty (every user
    saw both arms, so there is nothing to compare per variant), ``control`` is null and ``variants`` is the one
    variant "interleaved" (with ``traffic``). ``analysis_window`` (null: none) is the window the config sets;
    ``start_ms`` and ``end_ms`` are the exposures the report covers, within it. ``correction_family_size`` is the
    number of comparisons ``correction`` adjusted together (0 when it is none); the timeline is unadjusted.
    """

    experiment_key: str
    status: str
    control: str | None
    generated_at_ms: int
    alpha: float
    correction: str
    difference_type: str
    sequential: bool
    sequential_tuning_parameter: float
    start_ms: int | None
    end_ms: int | None
    total_users: int
    variants: list[VariantSummary]
    srm: SrmResult
    metrics: list[MetricReport]
    timeline: list[TimelinePoint] = field(default_factory=list)
    traffic_bucket_ms: int | None = None
    traffic: list[TrafficPoint] = field(default_factory=list)
    kind: str = "ab"
    interleaving: InterleavingReport | None = None
    analysis_window: WindowReport | None = None
    correction_family_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    """Tuples to lists and non-finite floats to None, so the output is strict JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def analysis_settings(config: AnalysisConfig) -> AnalysisSettings:
    return AnalysisSettings(
        alpha=config.alpha,
        difference_type=config.difference_type,
        correction=config.correction,
        sequential=config.sequential,
        sequential_tuning_parameter=config.sequential_tuning_parameter,
    )


def _variants_and_control(
    store: EventStore, config: AnalysisConfig, experiment_key: str, users: dict[str, int] | None = None
) -> tuple[dict[str, int], str | None, dict[str, float]]:
    """Users per variant (configured variants included at 0), the control key and normalised weights.

    The control is the configured one, else a variant named "control", else the first key in sort order.
    ``users`` are the exposed users per variant when already known (else the store is asked).
    """
    settings = config.experiment(experiment_key)
    counts = dict(store.variant_counts(experiment_key, window=settings.window) if users is None else users)
    for key in settings.weights or {}:
        counts.setdefault(key, 0)
    counts = dict(sorted(counts.items()))
    control = settings.control
    if control is None and counts:
        control = "control" if "control" in counts else next(iter(counts))
    if control is not None:
        counts.setdefault(control, 0)
    raw_weights = settings.weights or dict.fromkeys(counts, 1.0)
    total_weight = sum(raw_weights.values())
    weights = {key: raw_weights.get(key, 0.0) / total_weight for key in counts}
    return counts, control, weights


def _summary_parts(
    store: EventStore,
    config: AnalysisConfig,
    experiment_key: str,
    users: dict[str, int] | None = None,
    interleaving: bool = False,
) -> tuple[str | None, list[VariantSummary], SrmResult, int]:
    if interleaving:  # one variant, no control, nothing to split
        window = config.experiment(experiment_key).window
        counts = dict(store.variant_counts(experiment_key, window=window) if users is None else users)
        total = sum(counts.values())
        variants = [
            VariantSummary(key, False, n, 1.0, n / total if total else None) for key, n in counts.items()
        ]
        return None, variants, SrmResult(None, False, config.srm_threshold), total
    counts, control, weights = _variants_and_control(store, config, experiment_key, users)
    total = sum(counts.values())
    variants = [
        VariantSummary(
            key=key,
            is_control=key == control,
            users=users,
            expected_share=weights[key],
            observed_share=users / total if total else None,
        )
        for key, users in counts.items()
    ]
    p_value = None
    weighted = [(users, weights[key]) for key, users in counts.items() if weights[key] > 0]
    unplanned = sum(users for key, users in counts.items() if weights[key] == 0)
    if len(weighted) >= 2 and total > 0:
        p_value = 0.0 if unplanned else srm_p_value([u for u, _ in weighted], [w for _, w in weighted])
    srm = SrmResult(
        p_value=p_value, flagged=srm_flagged(p_value, config.srm_threshold), threshold=config.srm_threshold
    )
    return control, variants, srm, total


def experiment_summary(store: EventStore, config: AnalysisConfig, experiment_key: str) -> ExperimentSummary:
    """Status, users per variant and SRM of one experiment (cheap: no metric is read)."""
    return _summary(store, config, experiment_key, bool(store.interleaving_arms(experiment_key)))


def experiment_summaries(store: EventStore, config: AnalysisConfig) -> list[ExperimentSummary]:
    """``experiment_summary`` of every experiment the store lists, in its order: the dashboard's list.

    Experiment keys come from events any producer writes: asked per experiment, 500 keys of one exposure each
    cost 2.0 s (DuckDB) to 5.3 s (chDB) a listing. The store answers for all at once instead; only the
    experiments the config gives an analysis window are asked one by one (as many as the config names).
    """
    users = store.variant_counts_by_experiment()
    interleaving = store.interleaving_experiments()
    return [
        _summary(
            store, config, key, key in interleaving, None if config.experiment(key).window.bounded else n
        )
        for key, n in users.items()
    ]


def _summary(
    store: EventStore,
    config: AnalysisConfig,
    experiment_key: str,
    interleaving: bool,
    users: dict[str, int] | None = None,
) -> ExperimentSummary:
    """The summary of one experiment, from its users per variant when known (else the store is asked)."""
    control, variants, srm, total = _summary_parts(store, config, experiment_key, users, interleaving)
    return ExperimentSummary(
        experiment_key=experiment_key,
        status=config.experiment(experiment_key).status,
        control=control,
        total_users=total,
        variants=variants,
        srm=srm,
        kind="interleaving" if interleaving else "ab",
        analysis_window=WindowReport.of(config.experiment(experiment_key).window),
    )


def _empty_statistic(metric: MetricDefinition) -> TestStatistic:
    """The statistic of a variant without users, of the kind ``aggregate`` returns for ``metric``."""
    zero = SampleMean(0, 0.0, 0.0)
    if metric.cuped:
        return CupedMean(0, zero, zero, 0.0)
    if metric.type == "binomial":
        return Proportion(0, 0.0)
    if metric.type == "ratio":
        return Ratio(0, zero, zero, 0.0)
    return zero


def _complete(
    metric: MetricDefinition, stats: dict[str, TestStatistic], experiment_key: str, keys: list[str]
) -> dict[str, TestStatistic]:
    """``stats`` for exactly the report's variants (an empty statistic where a variant has no users yet)."""
    unknown = sorted(set(stats) - set(keys))
    if unknown:
        logger.warning(
            "experiment %s metric %s: rows for unknown variants %s", experiment_key, metric.name, unknown
        )
    return {key: stats.get(key, _empty_statistic(metric)) for key in keys}


def _variant_rows(
    stats: dict[str, TestStatistic],
    control: str | None,
    comparisons: dict[str, Comparison],
    adjusted: dict[str, Corrected | None],
    settings: AnalysisSettings,
) -> list[VariantMetricResult]:
    # CUPED means are only adjusted once both arms are pooled, so values are read off the test results.
    first = next(iter(comparisons.values()), None)
    control_value = first.absolute.control_mean if first is not None else None
    rows = []
    for key, stat in stats.items():
        comparison = comparisons.get(key)
        if key == control or comparison is None or stat.n == 0:
            rows.append(_row_without_lift(key, stat, key == control, control_value, comparison, settings))
            continue
        primary = comparison.primary(settings.difference_type)
        corrected = adjusted.get(key)
        adjusted_ci = None
        if corrected is not None:
            adjusted_ci = (
                primary.ci
                if corrected.interval_alpha == settings.alpha
                else comparison.primary_interval(settings, corrected.interval_alpha)
            )
        rows.append(
            VariantMetricResult(
                variant=key,
                is_control=False,
                users=stat.n,
                value=primary.treatment_mean,
                unadjusted_value=stat.unadjusted_mean,
                absolute_lift=Lift.from_result(comparison.absolute),
                relative_lift=Lift.from_result(comparison.relative),
                p_value=primary.p_value,
                p_value_greater=primary.p_value_greater,
                p_value_less=primary.p_value_less,
                adjusted_p_value=None if corrected is None else corrected.p_value,
                adjusted_ci=adjusted_ci,
                significant=corrected is not None and corrected.p_value < settings.alpha,
                sequential=settings.sequential,
                chance_to_win=comparison.bayesian.chance_to_win,
                error=primary.error,
                error_message=_error_message(primary.error),
            )
        )
    return rows


def _row_without_lift(
    key: str,
    stat: TestStatistic,
    is_control: bool,
    control_value: float | None,
    comparison: Comparison | None,
    settings: AnalysisSettings,
) -> VariantMetricResult:
    """The control's row, or a variant's that has nothing to compare: no users (its value is null, not the
    0.0 of an empty sum or a CUPED adjustment of nobody) or no control to compare with."""
    value = control_value if is_control and control_value is not None else stat.mean
    error = None if is_control or comparison is None else comparison.primary(settings.difference_type).error
    empty = stat.n == 0
    return VariantMetricResult(
        variant=key,
        is_control=is_control,
        users=stat.n,
        value=None if empty else value,
        unadjusted_value=None if empty else stat.unadjusted_mean,
        sequential=settings.sequential,
        error=error,
        error_message=_error_message(error),
    )


def analyse_metrics(
    config: AnalysisConfig,
    metrics: list[MetricDefinition],
    statistics: list[dict[str, TestStatistic]],
    control: str | None,
) -> list[MetricReport]:
    """Metric tables from per-variant sufficient statistics (one dict per metric, same order as ``metrics``).

    Every variant is compared with ``control``. The family the correction adjusts together is every goal
    metric (not a guardrail) times every treatment, as GrowthBook defines it: a guardrail is there to catch
    harm, and correcting it would make harm harder to see, while adding it would cost the goal metrics power.
    Guardrails keep their own p-values and intervals.
    """
    settings = analysis_settings(config)
    analysed = []
    for metric, stats in zip(metrics, statistics, strict=True):
        comparisons = compare_to_control(stats, control, settings, metric.inverse) if control else {}
        analysed.append((metric, stats, comparisons))
    adjusted: list[dict[str, Corrected | None]] = [{} for _ in analysed]
    for guardrails, family_settings in ((False, settings), (True, replace(settings, correction="none"))):
        flat = [
            (i, key, c.primary(settings.difference_type))
            for i, (metric, _, cs) in enumerate(analysed)
            if metric.guardrail == guardrails
            for key, c in cs.items()
        ]
        corrected = correct([result for _, _, result in flat], family_settings)
        for (i, key, _), one in zip(flat, corrected, strict=True):
            adjusted[i][key] = one
    reports = []
    for (metric, stats, comparisons), adjusted_by_variant in zip(analysed, adjusted, strict=True):
        rows = _variant_rows(stats, control, comparisons, adjusted_by_variant, settings)
        reports.append(
            MetricReport(
                name=metric.name,
                type=metric.type,
                description=metric.description,
                guardrail=metric.guardrail,
                inverse=metric.inverse,
                cuped=metric.cuped,
                variants=rows,
                corrected=settings.correction != "none" and not metric.guardrail,
            )
        )
    return reports


def _cut_points(start_ms: int, end_ms: int, points: int) -> list[int]:
    """Evenly spaced times from just after the start to the end (inclusive), without duplicates."""
    span = max(end_ms - start_ms, 0)
    cuts = sorted({start_ms + math.ceil(span * k / points) for k in range(1, points + 1)})
    return cuts or [end_ms]


def _timeline(
    config: AnalysisConfig,
    definitions: list[MetricDefinition],
    control: str,
    cuts: list[int],
    statistics: list[list[dict[str, TestStatistic]]],
) -> list[TimelinePoint]:
    """Cumulative lifts at each cut from the statistics computed for it (``statistics[cut][metric]``)."""
    settings = analysis_settings(config)
    points = []
    for until_ms, per_metric in zip(cuts, statistics, strict=True):
        for metric, stats in zip(definitions, per_metric, strict=True):
            for key, comparison in compare_to_control(stats, control, settings, metric.inverse).items():
                result = comparison.primary(settings.difference_type)
                points.append(
                    TimelinePoint(
                        time_ms=until_ms,
                        metric=metric.name,
                        variant=key,
                        users=stats[key].n,
                        estimate=result.estimate,
                        ci=result.ci,
                        p_value=result.p_value,
                    )
                )
    return points


def traffic_bucket_ms(start_ms: int, end_ms: int, target_buckets: int = 48) -> int:
    """A round bucket width (1 s, 5 s, ..., 1 week) giving at most about ``target_buckets`` buckets."""
    wanted = max(end_ms - start_ms, 1) / target_buckets
    for width in _NICE_BUCKETS_MS:
        if width >= wanted:
            return width
    week = _NICE_BUCKETS_MS[-1]
    return week * math.ceil(wanted / week)


def _traffic(
    store: EventStore, experiment_key: str, bucket_ms: int, window: AnalysisWindow
) -> tuple[list[TrafficPoint], dict[str, int]]:
    """The traffic chart's points and the users per variant they add up to."""
    cumulative: dict[str, int] = {}
    points = []
    timeline = store.exposure_timeline(experiment_key, bucket_ms, window=window)
    for bucket_start, variant, new_users in sorted(timeline):
        cumulative[variant] = cumulative.get(variant, 0) + new_users
        points.append(TrafficPoint(bucket_start, variant, new_users, cumulative[variant]))
    return points, cumulative


def build_report(
    store: EventStore, config: AnalysisConfig, experiment_key: str, with_timeline: bool = True
) -> ExperimentReport:
    """Analyse one experiment: SRM, every metric and variant, and (optionally) the timelines, over the users and
    outcomes of its analysis window (``ExperimentSettings.window``; everything without one).

    Raises:
        KeyError: the store has no such experiment.
    """
    if experiment_key not in store.experiments():
        raise KeyError(f"unknown experiment {experiment_key!r}")
    arms = store.interleaving_arms(experiment_key)
    definitions = [] if arms else config.metrics_for(experiment_key)
    window = config.experiment(experiment_key).window
    start_ms, end_ms = store.time_range(experiment_key, window=window)
    bucket_ms = None
    traffic: list[TrafficPoint] = []
    users: dict[str, int] | None = None
    cuts: list[int] = []
    if with_timeline:
        bucket_ms = traffic_bucket_ms(start_ms, end_ms)
        traffic, users = _traffic(store, experiment_key, bucket_ms, window)
        if config.timeline_points > 0:
            cuts = _cut_points(start_ms, end_ms, config.timeline_points)
    # One read for the metric table and every timeline point: the last point reads everything, so it equals the
    # metric table even for outcomes logged after the last exposure.
    raw = store.metric_statistics(experiment_key, definitions, [*cuts[:-1], None], window=window)
    if users is None and definitions:  # every user is in every metric's statistics
        users = {variant: stat.n for variant, stat in raw[-1][0].items()}
    control, variants, srm, total = _summary_parts(store, config, experiment_key, users, interleaving=bool(arms))
    keys = [v.key for v in variants]
    per_cut = [
        [_complete(m, stats, experiment_key, keys) for m, stats in zip(definitions, per_metric, strict=True)]
        for per_metric in raw
    ]
    metrics = analyse_metrics(config, definitions, per_cut[-1], control)
    timeline = _timeline(config, definitions, control, cuts, per_cut) if cuts and control is not None else []
    interleaving = interleaving_report(store, config, experiment_key, arms, cuts) if arms else None
    family = [r for m in metrics if m.corrected for r in m.variants if r.adjusted_p_value is not None]
    empty = total == 0  # no users: no time range, no traffic buckets
    return ExperimentReport(
        experiment_key=experiment_key,
        status=config.experiment(experiment_key).status,
        control=control,
        generated_at_ms=int(time.time() * 1000),
        alpha=config.alpha,
        correction=config.correction,
        difference_type=config.difference_type,
        sequential=config.sequential,
        sequential_tuning_parameter=config.sequential_tuning_parameter,
        start_ms=None if empty else start_ms,
        end_ms=None if empty else end_ms,
        total_users=total,
        variants=variants,
        srm=srm,
        metrics=metrics,
        timeline=timeline,
        traffic_bucket_ms=None if empty else bucket_ms,
        traffic=traffic,
        kind="interleaving" if arms else "ab",
        interleaving=interleaving,
        analysis_window=WindowReport.of(window),
        correction_family_size=len(family),
    )


def format_report_table(report: dict[str, Any]) -> str:
    """Plain-text table of a report (``ExperimentReport.to_dict()``): one block per metric, one row per variant
    (an interleaving experiment's report: see ``format_interleaving_table``)."""
    if report.get("kind") == "interleaving":
        return format_interleaving_table(report)
    relative = report["difference_type"] == "relative"
    srm = report["srm"]
    srm_text = "n/a"  # fewer than two variants: nothing was tested, so no verdict either
    if srm["p_value"] is not None:
        srm_text = f"p={srm['p_value']:.4g} {'MISMATCH' if srm['flagged'] else 'ok'}"
    name = text_format.name
    correction = report["correction"]
    family = ""
    if correction != "none":
        family = f" over {report['correction_family_size']} goal comparisons"
        family += ", guardrails uncorrected" if any(m["guardrail"] for m in report["metrics"]) else ""
    lines = [
        f"experiment {name(report['experiment_key'])} ({name(report['status'])}), "
        f"control {name(report['control'])}, {report['total_users']} users, SRM {srm_text}",
        f"alpha {report['alpha']}, correction {correction}{family}, "
        f"{'sequential (always valid)' if report['sequential'] else 'fixed horizon'}",
        "  "
        + ", ".join(
            f"{name(v['key'])}: {v['users']} ({text_format.number(v['observed_share'], '.1%')})"
            for v in report["variants"]
        ),
        *text_format.window_lines(report),
    ]
    errors: dict[str, str] = {}
    widths = (-16, 8, 11, 9, 21, 8, 8)
    # the interval that agrees with the verdict: adjusted where the correction adjusts the p-value
    ci_title = "ci" if correction == "none" else f"ci {correction}"
    titles = ("variant", "users", "value", "lift", ci_title, "p", "p adj")
    header = f"  {text_format.columns(titles, widths)}  sig"
    lift_pattern = "+.2%" if relative else "+.4g"
    for metric in report["metrics"]:
        flags = [metric["type"]] + [flag for flag in ("guardrail", "cuped", "inverse") if metric[flag]]
        lines += ["", f"{name(metric['name'])} [{', '.join(flags)}]", header]
        for row in metric["variants"]:
            lift = row["relative_lift" if relative else "absolute_lift"] or {}
            mark = "control" if row["is_control"] else ("yes" if row["significant"] else "no")
            if row["error"]:
                mark = row["error"]
                errors[row["error"]] = row["error_message"]
            cells = (
                name(row["variant"]),
                str(row["users"]),
                text_format.number(row["value"], ".5g"),
                text_format.number(lift.get("estimate"), lift_pattern),
                text_format.interval(row["adjusted_ci"] or lift.get("ci"), lift_pattern),
                text_format.p_value(row["p_value"]),
                text_format.p_value(row["adjusted_p_value"]),
            )
            lines.append(f"  {text_format.columns(cells, widths)}  {mark}")
    if errors:
        lines += [""] + [f"{code}: {message}" for code, message in sorted(errors.items())]
    return "\n".join(lines)
