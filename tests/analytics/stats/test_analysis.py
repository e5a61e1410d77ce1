"""Experiment-level analysis: comparisons against control and the shared CUPED theta."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analytics.stats.analysis import AnalysisSettings, compare_to_control, correct, pool_cuped
from analytics.stats.models.statistics import CupedMean, SampleMean
from tests.analytics.stats.chosen_p_values import arms_with_p_values

RNG = np.random.default_rng(17)
PRE = {v: RNG.normal(10, 3, 300 + 50 * i) for i, v in enumerate("abc")}
POST = {v: 0.8 * PRE[v] + RNG.normal(0.2 * i, 1, PRE[v].size) for i, v in enumerate("abc")}


def test_cuped_theta_is_pooled_over_all_variants() -> None:
    stats = {v: CupedMean.from_values(POST[v], PRE[v]) for v in "abc"}
    pooled = pool_cuped(stats)
    pre, post = np.concatenate(list(PRE.values())), np.concatenate(list(POST.values()))
    theta = np.cov(post, pre, ddof=1)[0, 1] / np.var(pre, ddof=1)
    assert [s.theta for s in pooled.values()] == pytest.approx([theta] * 3, rel=1e-10)
    comparisons = compare_to_control(stats, "a", AnalysisSettings(difference_type="absolute"))
    assert comparisons["b"].absolute.control_mean == comparisons["c"].absolute.control_mean
    adjusted = {v: POST[v] - theta * (PRE[v] - pre.mean()) for v in "abc"}
    reference = scipy_stats.ttest_ind(adjusted["c"], adjusted["a"], equal_var=False)
    assert comparisons["c"].absolute.p_value == pytest.approx(reference.pvalue, rel=1e-6)


def test_non_cuped_statistics_pass_through() -> None:
    stats = {v: SampleMean.from_values(POST[v]) for v in "abc"}
    assert pool_cuped(stats) is stats
    comparisons = compare_to_control(stats, "a", AnalysisSettings())
    assert set(comparisons) == {"b", "c"}
    for c in comparisons.values():
        assert c.primary("relative") is c.relative and c.primary("absolute") is c.absolute
        assert c.bayesian.chance_to_win is not None


def test_correction_skips_errors() -> None:
    stats = {
        "a": SampleMean.from_values(POST["a"]),
        "b": SampleMean(1, 1.0, 1.0),
        "c": SampleMean.from_values(POST["c"]),
    }
    comparisons = compare_to_control(stats, "a", AnalysisSettings(correction="holm"))
    results = [comparisons["b"].relative, comparisons["c"].relative]
    corrected = correct(results, AnalysisSettings(correction="holm"))
    assert corrected[0] is None
    assert corrected[1] is not None and corrected[1].p_value == pytest.approx(results[1].p_value)
    assert corrected[1].interval_alpha == 0.05  # a family of one: nothing to adjust


@pytest.mark.parametrize("sequential", [False, True])
def test_primary_interval_at_the_corrected_level_agrees_with_the_adjusted_p_value(sequential: bool) -> None:
    """Fixed horizon: raw p 0.01, 0.03, 0.2 -> Holm 0.03, 0.06, 0.2 (b is significant raw, not after Holm) at
    the levels 0.05 * p / p_adj = 0.0167, 0.025, 0.05. Each interval at its level excludes 0 exactly where the
    adjusted p is below 0.05, in the sequential mode too; at alpha it is the test's own interval."""
    settings = AnalysisSettings(difference_type="absolute", correction="holm", sequential=sequential)
    comparisons = compare_to_control(
        arms_with_p_values({"a": 0.01, "b": 0.03, "c": 0.2}), "control", settings
    )
    results = [c.absolute for c in comparisons.values()]
    corrected = correct(results, settings)
    if not sequential:
        assert [r.p_value for r in results] == pytest.approx([0.01, 0.03, 0.2], rel=1e-9)
        assert [c.p_value for c in corrected] == pytest.approx([0.03, 0.06, 0.2], rel=1e-9)
        assert [c.interval_alpha for c in corrected] == pytest.approx([0.05 / 3, 0.025, 0.05], rel=1e-9)
    for comparison, result, one in zip(comparisons.values(), results, corrected, strict=True):
        low, high = comparison.primary_interval(settings, one.interval_alpha)
        assert (low > 0 or high < 0) is (one.p_value < 0.05)
        assert high - low >= result.ci[1] - result.ci[0]
        assert comparison.primary_interval(settings, 0.05) == pytest.approx(result.ci, rel=1e-12)
