"""The interleaving part of an experiment report: which arm users prefer, with its tests and its course over time.

``ExperimentReport.interleaving`` (``kind: "interleaving"``) holds an ``InterleavingReport``; its dataclasses are the
JSON schema the dashboard reads. A is the experiment's first arm, B its second; the preference share
``delta = (wins_b - wins_a) / users_with_clicks`` is positive when users prefer B (``analytics.stats.interleaving``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from analytics import text_format
from analytics.interleaving import Arm, ArmsSeen
from analytics.metrics import AnalysisConfig, EventStore
from analytics.stats.interleaving import (
    InterleavingConfig,
    PreferenceCounts,
    PreferenceTest,
    analyze_interleaving,
)
from analytics.stats.messages import INTERLEAVING_MESSAGES


@dataclass(frozen=True)
class TestReport:
    """One test: estimate, interval (always-valid when sequential) and two-sided p-value, or an error code
    (``analytics.stats.messages``) with its text (``error_message``) when the data cannot tell yet."""

    estimate: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    significant: bool
    error: str | None
    error_message: str | None = None

    @classmethod
    def of(cls, test: PreferenceTest, alpha: float) -> TestReport:
        significant = test.p_value is not None and test.p_value < alpha
        message = None if test.error is None else INTERLEAVING_MESSAGES.get(test.error, test.error)
        return cls(test.estimate, test.ci, test.p_value, significant, test.error, message)


@dataclass(frozen=True)
class PreferencePoint:
    """The preference over all data up to ``time_ms``: the counts and the sign test's delta with its interval."""

    time_ms: int
    users: int
    users_with_clicks: int
    wins_a: int
    wins_b: int
    ties: int
    estimate: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    error: str | None


@dataclass(frozen=True)
class InterleavingReport:
    """Everything the dashboard shows for an interleaving experiment.

    ``arms`` is the pair most exposures named; ``arm_sets`` lists every pair (more than one: an arm's model changed
    while the experiment ran, and the comparison mixes them). Both are of the exposures the analysis window
    keeps (rule 6 of ``analytics.interleaving``); a window without any lists no pair, and A and B are then the
    pair of all time (the experiment's names for them). ``preference`` is the sign test on delta,
    ``credit`` the t-test on the mean per-user credit difference (clicks credited to B minus A); ``preferred`` is
    the arm the sign test favours ("A" or "B"), null when it is not significant.
    """

    click_metric: str
    arm_a: Arm
    arm_b: Arm
    arm_sets: list[ArmsSeen]
    users: int
    users_with_clicks: int
    wins_a: int
    wins_b: int
    ties: int
    preference: TestReport
    credit: TestReport
    preferred: str | None
    sequential: bool
    timeline: list[PreferencePoint]


def _config(config: AnalysisConfig) -> InterleavingConfig:
    return InterleavingConfig(
        alpha=config.alpha,
        sequential=config.sequential,
        sequential_tuning_parameter=config.sequential_tuning_parameter,
    )


def _point(time_ms: int, counts: PreferenceCounts, settings: InterleavingConfig) -> PreferencePoint:
    sign = analyze_interleaving(counts, settings).sign_test
    return PreferencePoint(
        time_ms=time_ms,
        users=counts.n,
        users_with_clicks=counts.clicked,
        wins_a=counts.wins_a,
        wins_b=counts.wins_b,
        ties=counts.ties,
        estimate=sign.estimate,
        ci=sign.ci,
        p_value=sign.p_value,
        error=sign.error,
    )


def interleaving_report(
    store: EventStore,
    config: AnalysisConfig,
    experiment_key: str,
    arms: Sequence[ArmsSeen],
    cuts: Sequence[int],
) -> InterleavingReport:
    """Analyse an interleaving experiment (``arms``: ``store.interleaving_arms`` of all time, non-empty) over
    its analysis window (everything without one), and at each timeline cut (one query for all)."""
    settings = _config(config)
    window = config.experiment(experiment_key).window
    pairs = store.interleaving_arms(experiment_key, window=window) if window.bounded else list(arms)
    named = (pairs or arms)[0]
    per_cut = store.preference_counts(
        experiment_key, [*cuts[:-1], None], config.interleaving.click_metric, window=window
    )
    counts = per_cut[-1]
    result = analyze_interleaving(counts, settings)
    preference = TestReport.of(result.sign_test, config.alpha)
    preferred = None
    if preference.significant and preference.estimate:
        preferred = "B" if preference.estimate > 0 else "A"
    return InterleavingReport(
        click_metric=config.interleaving.click_metric,
        arm_a=named.a,
        arm_b=named.b,
        arm_sets=pairs,
        users=counts.n,
        users_with_clicks=counts.clicked,
        wins_a=counts.wins_a,
        wins_b=counts.wins_b,
        ties=counts.ties,
        preference=preference,
        credit=TestReport.of(result.credit_test, config.alpha),
        preferred=preferred,
        sequential=result.sequential,
        timeline=[_point(cut, c, settings) for cut, c in zip(cuts, per_cut, strict=True)] if cuts else [],
    )


def _arm_text(arm: dict[str, Any]) -> str:
    """``key: model vversion`` of one arm, its names (from events) printable."""
    name = text_format.name
    return f"{name(arm['key'])}: {name(arm['model_name'])} v{name(arm['model_version'])}"


def format_interleaving_table(report: dict[str, Any]) -> str:
    """Plain-text report of an interleaving experiment (``ExperimentReport.to_dict()`` with ``kind`` interleaving)."""
    il = report["interleaving"]
    a, b = il["arm_a"], il["arm_b"]
    lines = [
        f"experiment {text_format.name(report['experiment_key'])} ({text_format.name(report['status'])}), "
        f"interleaving, {il['users']} users, {il['users_with_clicks']} with credited {il['click_metric']}s",
        f"alpha {report['alpha']}, {'sequential (always valid)' if il['sequential'] else 'fixed horizon'}",
        *text_format.window_lines(report),
        f"  A = {_arm_text(a)}",
        f"  B = {_arm_text(b)}",
    ]
    if len(il["arm_sets"]) > 1:
        lines.append(f"  WARNING: the arms changed while it ran ({len(il['arm_sets'])} pairs of models)")
    widths = (-40, 9, 21, 8)
    lines += [
        f"  users preferring A {il['wins_a']}, tied {il['ties']}, preferring B {il['wins_b']}",
        "",
        f"  {text_format.columns(('test', 'estimate', 'ci', 'p'), widths)}  verdict",
    ]
    errors: dict[str, str] = {}
    for name, test, pattern in (
        ("preference delta (sign test)", il["preference"], "+.2%"),
        ("credit B - A per user (t-test)", il["credit"], "+.4f"),
    ):
        verdict = test["error"] or ("significant" if test["significant"] else "not significant")
        if test["error"]:
            errors[test["error"]] = test["error_message"]
        cells = (
            name,
            text_format.number(test["estimate"], pattern),
            text_format.interval(test["ci"], pattern),
            text_format.p_value(test["p_value"]),
        )
        lines.append(f"  {text_format.columns(cells, widths)}  {verdict}")
    if il["preferred"]:
        arm = a if il["preferred"] == "A" else b
        lines.append(f"  users prefer {il['preferred']} ({_arm_text(arm)})")
    if errors:
        lines += [""] + [f"{code}: {message}" for code, message in sorted(errors.items())]
    return "\n".join(lines)
