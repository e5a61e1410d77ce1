"""Frequentist tests: each formula against a direct scipy/statsmodels computation and hard-coded numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats import proportion as sm_proportion

from analytics.stats import messages
from analytics.stats.frequentist.tests import (
    SequentialTTest,
    TTest,
    mixture_rho_squared,
    sequential_half_width,
    sequential_p_value,
)
from analytics.stats.models.settings import FrequentistConfig
from analytics.stats.models.statistics import CupedMean, Proportion, Ratio, SampleMean

RNG = np.random.default_rng(7)
A = RNG.exponential(2.0, size=400)
B = RNG.exponential(2.3, size=650)
ABSOLUTE = FrequentistConfig(difference_type="absolute")
RELATIVE = FrequentistConfig(difference_type="relative")


def test_welch_absolute_matches_scipy_ttest_ind() -> None:
    result = TTest(SampleMean.from_values(A), SampleMean.from_values(B), ABSOLUTE).compute_result()
    reference = scipy_stats.ttest_ind(B, A, equal_var=False)
    low, high = reference.confidence_interval(0.95)
    assert result.estimate == pytest.approx(B.mean() - A.mean(), rel=1e-12)
    assert result.df == pytest.approx(reference.df, rel=1e-9)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-8)
    assert result.ci == pytest.approx((low, high), rel=1e-9)
    greater = scipy_stats.ttest_ind(B, A, equal_var=False, alternative="greater").pvalue
    assert result.p_value_greater == pytest.approx(greater, rel=1e-8)
    assert result.p_value_less == pytest.approx(1 - greater, rel=1e-8)


def test_welch_absolute_hard_coded() -> None:
    result = TTest(SampleMean(1000, 10000.0, 120000.0), SampleMean(1200, 12300.0, 150000.0), ABSOLUTE)
    r = result.compute_result()
    assert round(r.estimate, 6) == 0.25
    assert round(r.se, 6) == 0.191438  # sqrt(20.02002 / 1000 + 19.954128 / 1200)
    assert round(r.df, 2) == 2125.79
    assert round(r.p_value, 6) == 0.191726
    assert tuple(round(x, 6) for x in r.ci) == (-0.125425, 0.625425)
    reference = scipy_stats.ttest_ind_from_stats(
        10.25, math.sqrt(23925 / 1199), 1200, 10.0, math.sqrt(20000 / 999), 1000, equal_var=False
    )
    assert r.p_value == pytest.approx(reference.pvalue, rel=1e-9)


def test_relative_lift_delta_method() -> None:
    a, b = SampleMean.from_values(A), SampleMean.from_values(B)
    result = TTest(a, b, RELATIVE).compute_result()
    mean_a, mean_b = A.mean(), B.mean()
    var_a, var_b = np.var(A, ddof=1) / A.size, np.var(B, ddof=1) / B.size
    variance = var_b / mean_a**2 + var_a * mean_b**2 / mean_a**4
    components = (var_a * mean_b**2 / mean_a**4, var_b / mean_a**2)
    df = sum(components) ** 2 / (components[0] ** 2 / (A.size - 1) + components[1] ** 2 / (B.size - 1))
    t = (mean_b / mean_a - 1) / math.sqrt(variance)
    assert result.estimate == pytest.approx(mean_b / mean_a - 1, rel=1e-12)
    assert result.se == pytest.approx(math.sqrt(variance), rel=1e-10)
    assert result.df == pytest.approx(df, rel=1e-10)
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), df), rel=1e-8)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(variance)
    assert result.ci == pytest.approx((result.estimate - half, result.estimate + half), rel=1e-9)


def test_relative_hard_coded() -> None:
    r = TTest(
        SampleMean(1000, 10000.0, 120000.0), SampleMean(1000, 10500.0, 130000.0), RELATIVE
    ).compute_result()
    assert round(r.estimate, 6) == 0.05
    assert round(r.se, 6) == 0.020455
    assert round(r.p_value, 6) == 0.014597
    assert tuple(round(x, 6) for x in r.ci) == (0.009884, 0.090116)


@pytest.mark.parametrize("scale", [1e-90, 1e90])
def test_relative_lift_does_not_depend_on_the_unit(scale: float) -> None:
    """The hard-coded case above in units 1e90 times larger or smaller: the control mean's 4th power
    underflowed to 0 (ZeroDivisionError) or overflowed (NUMERIC_OVERFLOW), though the lift has no unit."""
    r = TTest(
        SampleMean(1000, 10000.0 * scale, 120000.0 * scale**2),
        SampleMean(1000, 10500.0 * scale, 130000.0 * scale**2),
        RELATIVE,
    ).compute_result()
    assert r.error is None
    assert round(r.estimate, 6) == 0.05 and round(r.se, 6) == 0.020455 and round(r.p_value, 6) == 0.014597
    assert tuple(round(x, 6) for x in r.ci) == (0.009884, 0.090116)


@pytest.mark.parametrize("scale", [1e-90, 1e90])
def test_welch_df_does_not_depend_on_the_unit(scale: float) -> None:
    """Absolute lift of [1, 5, 9, 2] over [1, 2, 3] in units 1e90 times smaller or larger. Reference: scipy
    ``ttest_ind(b, a, equal_var=False)`` on the unscaled values: df 3.593879, p 0.305953, CI (-3.232441,
    7.732441) (scipy itself overflows at 1e90). The squared variance components underflowed to 0 and the df
    fell back to the pooled 5 (p 0.2867), or overflowed to inf and the result was NUMERIC_OVERFLOW."""
    control = SampleMean.from_values(np.array([1.0, 2.0, 3.0]) * scale)
    treatment = SampleMean.from_values(np.array([1.0, 5.0, 9.0, 2.0]) * scale)
    r = TTest(control, treatment, ABSOLUTE).compute_result()
    assert r.error is None and r.ci is not None
    assert r.df == pytest.approx(3.593879306813061, rel=1e-9)
    assert r.p_value == pytest.approx(0.3059531546429112, rel=1e-9)
    assert (r.ci[0] / scale, r.ci[1] / scale) == pytest.approx(
        (-3.2324408297635587, 7.732440829763559), rel=1e-9
    )


def test_proportions_match_statsmodels_wald() -> None:
    a, b = Proportion(5000, 500.0), Proportion(5000, 560.0)
    result = TTest(a, b, ABSOLUTE).compute_result()
    _, p_value = sm_proportion.test_proportions_2indep(560, 5000, 500, 5000, method="wald", compare="diff")
    low, high = sm_proportion.confint_proportions_2indep(560, 5000, 500, 5000, method="wald", compare="diff")
    assert result.estimate == pytest.approx(0.012)
    assert result.p_value == pytest.approx(p_value, abs=1e-4)  # Student t (df ~ 9997) vs normal
    assert result.ci == pytest.approx((low, high), abs=1e-5)


def test_ratio_delta_method_matches_linearised_welch() -> None:
    """A ratio test equals Welch on each arm's linearised values (num - R den) / mean(den)."""
    den_a, den_b = RNG.poisson(5, 400) + 1.0, RNG.poisson(5, 650) + 1.0
    num_a, num_b = RNG.binomial(den_a.astype(int), 0.10), RNG.binomial(den_b.astype(int), 0.12)
    stat_a, stat_b = Ratio.from_values(num_a, den_a), Ratio.from_values(num_b, den_b)
    result = TTest(stat_a, stat_b, ABSOLUTE).compute_result()
    lin_a = (num_a - stat_a.mean * den_a) / den_a.mean() + stat_a.mean
    lin_b = (num_b - stat_b.mean * den_b) / den_b.mean() + stat_b.mean
    reference = scipy_stats.ttest_ind(lin_b, lin_a, equal_var=False)
    assert result.estimate == pytest.approx(num_b.sum() / den_b.sum() - num_a.sum() / den_a.sum(), rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-8)
    assert result.ci == pytest.approx(reference.confidence_interval(0.95), rel=1e-8)


@pytest.mark.parametrize("scale", [1e-100, 1e100])
def test_ratio_does_not_depend_on_the_denominator_unit(scale: float) -> None:
    """Clicks per impression with impressions counted in a unit 1e100 times smaller or larger: the ratio and
    its interval scale by 1 / scale, the p-value stays. Reference: scipy ``ttest_ind`` on the linearised
    values in units of 1 (as above). The delta method's mean_den^4 underflowed to 0 (ZeroDivisionError out
    of the test) or overflowed to inf (NUMERIC_OVERFLOW)."""
    rng = np.random.default_rng(11)
    den_a, den_b = rng.poisson(5, 300) + 1.0, rng.poisson(5, 300) + 1.0
    num_a, num_b = rng.binomial(den_a.astype(int), 0.10), rng.binomial(den_b.astype(int), 0.13)
    ratio_a, ratio_b = num_a.sum() / den_a.sum(), num_b.sum() / den_b.sum()
    lin_a = (num_a - ratio_a * den_a) / den_a.mean() + ratio_a
    lin_b = (num_b - ratio_b * den_b) / den_b.mean() + ratio_b
    reference = scipy_stats.ttest_ind(lin_b, lin_a, equal_var=False)
    stat_a = Ratio.from_values(num_a, den_a * scale)
    stat_b = Ratio.from_values(num_b, den_b * scale)
    result = TTest(stat_a, stat_b, ABSOLUTE).compute_result()
    assert result.error is None and result.ci is not None
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-8)
    low, high = reference.confidence_interval(0.95)
    assert (result.ci[0] * scale, result.ci[1] * scale) == pytest.approx((low, high), rel=1e-8)


def test_cuped_matches_welch_on_adjusted_values_and_shrinks_se() -> None:
    pre_a, pre_b = RNG.normal(10, 3, 400), RNG.normal(10, 3, 650)
    post_a = 0.8 * pre_a + RNG.normal(0, 1, 400)
    post_b = 0.8 * pre_b + RNG.normal(0.3, 1, 650)
    stat_a, stat_b = CupedMean.from_values(post_a, pre_a), CupedMean.from_values(post_b, pre_b)
    result = TTest(stat_a, stat_b, ABSOLUTE).compute_result()
    pre, post = np.concatenate([pre_a, pre_b]), np.concatenate([post_a, post_b])
    theta = np.cov(post, pre, ddof=1)[0, 1] / np.var(pre, ddof=1)
    adj_a, adj_b = post_a - theta * (pre_a - pre.mean()), post_b - theta * (pre_b - pre.mean())
    reference = scipy_stats.ttest_ind(adj_b, adj_a, equal_var=False)
    assert result.estimate == pytest.approx(adj_b.mean() - adj_a.mean(), rel=1e-10)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-6)
    assert result.ci == pytest.approx(reference.confidence_interval(0.95), rel=1e-8)
    plain = TTest(SampleMean.from_values(post_a), SampleMean.from_values(post_b), ABSOLUTE).compute_result()
    assert result.se < 0.5 * plain.se


def test_sequential_matches_howard_normal_mixture_boundary() -> None:
    """Half-width equals sqrt((V + r) / N^2 * log((V + r) / (r alpha^2))) with V = N s2, r = s2 / rho^2."""
    se, n, alpha, tuning = 0.05, 2000, 0.05, 5000.0
    rho2 = mixture_rho_squared(alpha, tuning)
    s2 = se**2 * n
    v, r = n * s2, s2 / rho2
    expected = math.sqrt((v + r) / n**2 * math.log((v + r) / (r * alpha**2)))
    assert sequential_half_width(se, n, alpha, rho2) == pytest.approx(expected, rel=1e-12)
    assert round(rho2, 8) == 0.00158723  # (5.991465 + log(6.991465)) / 5000
    assert round(sequential_half_width(se, n, alpha, rho2), 6) == 0.156189


def test_sequential_interval_and_p_value_agree() -> None:
    a, b = SampleMean(3000, 3000.0, 6000.0), SampleMean(3000, 3200.0, 6500.0)
    fixed = TTest(a, b, ABSOLUTE).compute_result()
    seq = SequentialTTest(
        a, b, FrequentistConfig(difference_type="absolute", sequential=True)
    ).compute_result()
    assert seq.sequential and seq.estimate == fixed.estimate
    assert seq.ci[1] - seq.ci[0] > fixed.ci[1] - fixed.ci[0]
    assert seq.p_value > fixed.p_value
    assert (seq.ci[0] > 0) == (seq.p_value < 0.05)
    assert round(seq.p_value, 6) == 0.165989  # while the fixed-horizon p is 0.0105
    # At the boundary the p-value equals alpha.
    rho2 = mixture_rho_squared(0.05, 5000.0)
    half = sequential_half_width(fixed.se, 6000, 0.05, rho2)
    assert sequential_p_value(half, fixed.se, 6000, rho2) == pytest.approx(0.05, rel=1e-9)


@pytest.mark.parametrize(
    ("stat_a", "stat_b", "config", "code"),
    [
        (SampleMean(1, 1.0, 1.0), SampleMean(10, 10.0, 20.0), ABSOLUTE, messages.NO_UNITS),
        (SampleMean(10, 10.0, 10.0), SampleMean(10, 20.0, 40.0), ABSOLUTE, messages.ZERO_VARIANCE),
        # Constants of 0.1 and 0.3 as numpy sums them: the rounding residue 8.5e-17 of the treatment's variance
        # gave p = 0 and the interval (0.1999999994, 0.2000000006), where constants of 1 and 2 gave the code.
        (
            SampleMean.from_values(np.full(1000, 0.1)),
            SampleMean.from_values(np.full(1000, 0.3)),
            ABSOLUTE,
            messages.ZERO_VARIANCE,
        ),
        (SampleMean(10, 0.0, 10.0), SampleMean(10, 20.0, 50.0), RELATIVE, messages.BASELINE_ZERO),
        # Control -5, treatment -4 per unit: the treatment is higher, mean_b / mean_a - 1 says -20%.
        (SampleMean(10, -50.0, 260.0), SampleMean(10, -40.0, 170.0), RELATIVE, messages.BASELINE_NEGATIVE),
        # A treatment without a single event: relative lift -100% with a delta-method variance of exactly 0
        # (found by the demo on a small real-data run: it divided by zero).
        (Proportion(60, 3.0), Proportion(60, 0.0), RELATIVE, messages.ZERO_VARIANCE),
        (
            Ratio(5, SampleMean(5, 1.0, 1.0), SampleMean(5, 0.0, 0.0), 0.0),
            Ratio(5, SampleMean(5, 1.0, 1.0), SampleMean(5, 5.0, 5.0), 1.0),
            ABSOLUTE,
            messages.DENOMINATOR_ZERO,
        ),
    ],
)
def test_data_problems_come_back_as_error_codes(stat_a, stat_b, config, code) -> None:
    result = TTest(stat_a, stat_b, config).compute_result()
    assert result.error == code
    assert result.p_value is None and result.ci is None


def test_mixed_statistic_kinds_are_a_programmer_error() -> None:
    with pytest.raises(TypeError):
        TTest(SampleMean(10, 1.0, 1.0), Proportion(10, 1.0), ABSOLUTE)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="alpha"):
        FrequentistConfig(alpha=1.5)
