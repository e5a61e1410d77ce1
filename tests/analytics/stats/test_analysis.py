"""Experiment-level analysis: comparisons against control and the shared CUPED theta."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analytics.stats.analysis import AnalysisSettings, adjusted_p_values, compare_to_control, pool_cuped
from analytics.stats.models.statistics import CupedMean, SampleMean

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


def test_adjusted_p_values_skip_errors() -> None:
    stats = {
        "a": SampleMean.from_values(POST["a"]),
        "b": SampleMean(1, 1.0, 1.0),
        "c": SampleMean.from_values(POST["c"]),
    }
    comparisons = compare_to_control(stats, "a", AnalysisSettings(correction="holm"))
    results = [comparisons["b"].relative, comparisons["c"].relative]
    adjusted = adjusted_p_values(results, AnalysisSettings(correction="holm"))
    assert adjusted[0] is None
    assert adjusted[1] == pytest.approx(results[1].p_value)
