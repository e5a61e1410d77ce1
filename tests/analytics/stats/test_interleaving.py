"""Interleaving statistics: each formula against scipy/statsmodels numbers, then calibration by simulation."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

from analytics.stats import messages
from analytics.stats.frequentist.tests import mixture_rho_squared, sequential_half_width
from analytics.stats.interleaving import (
    InterleavingConfig,
    PreferenceCounts,
    analyze_interleaving,
    clopper_pearson,
    credit_test,
    sequential_credit_test,
    sequential_sign_test,
    sign_test,
)

# Per-user credit differences of 25 users (B minus A); 9 prefer B, 4 prefer A, none tied, 12 without clicks.
D = np.array([2, 1, 0, 0, -1, 3, 0, 1, 0, 0, -2, 1, 0, 0, 0, 1, 2, 0, -1, 0, 1, 0, 0, 1, 0])
COUNTS = PreferenceCounts(
    n=500, wins_a=70, wins_b=95, ties=15, credit_diff_sum=31.0, credit_diff_sum_squares=241.0
)


def counts_of(diffs: np.ndarray, ties: int = 0) -> PreferenceCounts:
    """Counts of users whose only information is their credit difference (``ties`` of the zeros clicked)."""
    return PreferenceCounts(
        n=len(diffs),
        wins_a=int((diffs < 0).sum()),
        wins_b=int((diffs > 0).sum()),
        ties=ties,
        credit_diff_sum=float(diffs.sum()),
        credit_diff_sum_squares=float((diffs * diffs).sum()),
    )


def test_preference_share() -> None:
    assert COUNTS.clicked == 180
    assert COUNTS.preference == pytest.approx((95 - 70) / 180)
    assert PreferenceCounts(10, 0, 0, 0, 0.0, 0.0).preference == 0.0


def test_sign_test_hard_coded_from_scipy_binomtest_and_statsmodels_beta_interval() -> None:
    result = sign_test(COUNTS)
    assert round(result.p_value, 9) == 0.061378327  # scipy.stats.binomtest(95, 165).pvalue
    low, high = 0.4965272025790938, 0.6522165284045873  # proportion_confint(95, 165, method="beta")
    share = 165 / 180
    assert result.ci == pytest.approx((share * (2 * low - 1), share * (2 * high - 1)), rel=1e-12)
    assert tuple(round(x, 6) for x in result.ci) == (-0.006367, 0.279064)
    ninety = sign_test(PreferenceCounts(100, 20, 40, 10, 20.0, 80.0), alpha=0.1)
    assert round(ninety.p_value, 9) == 0.013489294  # binomtest(40, 60).pvalue
    low, high = 0.5535343555347743, 0.7669630150976389  # proportion_confint(40, 60, alpha=0.1, method="beta")
    assert ninety.ci == pytest.approx((60 / 70 * (2 * low - 1), 60 / 70 * (2 * high - 1)), rel=1e-12)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 7), (3, 7), (7, 7), (50, 100), (61, 100), (4900, 10000)])
def test_sign_test_against_scipy_directly(k: int, n: int) -> None:
    result = sign_test(PreferenceCounts(n, n - k, k, 0, 0.0, 0.0))
    assert result.p_value == pytest.approx(scipy_stats.binomtest(k, n).pvalue, rel=1e-9, abs=1e-15)
    low, high = proportion_confint(k, n, alpha=0.05, method="beta")
    assert clopper_pearson(k, n, 0.05) == pytest.approx((low, high), rel=1e-9, abs=1e-12)


def test_sign_interval_excludes_zero_exactly_when_significant() -> None:
    for n in range(1, 80):
        for k in range(n + 1):
            result = sign_test(PreferenceCounts(n + 5, n - k, k, 5, 0.0, 0.0))
            low, high = result.ci
            assert (low > 0 or high < 0) == (result.p_value < 0.05), (k, n)


def test_credit_test_matches_scipy_ttest_1samp() -> None:
    result = credit_test(counts_of(D))
    reference = scipy_stats.ttest_1samp(D, 0.0)
    assert result.estimate == pytest.approx(9 / 25)
    assert result.df == 24
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    assert result.ci == pytest.approx(tuple(reference.confidence_interval(0.95)), rel=1e-10)
    assert round(result.p_value, 9) == 0.095131245  # hard-coded from scipy
    assert tuple(round(x, 9) for x in result.ci) == (-0.067647219, 0.787647219)


def test_counts_variance_matches_numpy_on_raw_values() -> None:
    rng = np.random.default_rng(3)
    diffs = rng.poisson(1.2, 3000) - rng.poisson(1.0, 3000)
    counts = counts_of(diffs)
    assert counts.credit_diff_variance == pytest.approx(np.var(diffs, ddof=1), rel=1e-10)
    signs = np.sign(diffs[diffs != 0])  # no ties here: every clicker with a zero difference is excluded
    assert counts.sign_variance == pytest.approx(np.var(signs, ddof=1), rel=1e-10)
    halves = counts_of(diffs[:1000]) + counts_of(diffs[1000:])
    assert halves == counts
    with pytest.raises(TypeError):
        counts + 1  # type: ignore[operator]


def _msprt_p_value(estimate: float, variance: float, units: int, tuning: float, alpha: float) -> float:
    """Johari et al. (2017) mixture SPRT: p = min(1, 1 / Lambda), Lambda = sqrt(V / (V + tau2)) *
    exp(tau2 * estimate^2 / (2 V (V + tau2))), V = variance / units, tau2 = rho^2 * variance (rho^2 from
    Howard et al.'s tuning at ``tuning`` units)."""
    log_term = -2 * math.log(alpha)
    tau2 = (log_term + math.log(log_term + 1)) / tuning * variance
    v = variance / units
    likelihood_ratio = math.sqrt(v / (v + tau2)) * math.exp(tau2 * estimate**2 / (2 * v * (v + tau2)))
    return min(1.0, 1.0 / likelihood_ratio)


def test_sequential_tests_are_the_msprt_of_their_per_user_means() -> None:
    config = InterleavingConfig(sequential=True, sequential_tuning_parameter=1000.0)
    sign = sequential_sign_test(COUNTS, config)
    sign_variance = (165 - 180 * COUNTS.preference**2) / 179
    assert sign.p_value == pytest.approx(_msprt_p_value(COUNTS.preference, sign_variance, 180, 1000.0, 0.05))
    assert round(sign.p_value, 6) == 0.502556  # the formula above, evaluated independently
    credit = sequential_credit_test(COUNTS, config)
    credit_variance = (241 - 31**2 / 500) / 499
    assert credit.p_value == pytest.approx(_msprt_p_value(31 / 500, credit_variance, 500, 1000.0, 0.05))
    assert round(credit.p_value, 6) == 0.449089
    # Each interval excludes 0 exactly when its always-valid p-value is below alpha.
    for test in (sign, credit):
        assert (test.ci[0] > 0 or test.ci[1] < 0) == (test.p_value < 0.05)
    assert mixture_rho_squared(0.05, 1000.0) > 0


def test_sequential_preference_interval_stays_within_the_range_of_delta() -> None:
    """60 users who clicked, 52 prefer B: the normal-mixture interval reaches past +1, which delta cannot."""
    counts = PreferenceCounts(n=65, wins_a=5, wins_b=52, ties=3, credit_diff_sum=47, credit_diff_sum_squares=60)
    config = InterleavingConfig(sequential=True)
    test = sequential_sign_test(counts, config)
    se = math.sqrt(counts.sign_variance / 60)
    half = sequential_half_width(se, 60, 0.05, mixture_rho_squared(0.05, config.sequential_tuning_parameter))
    assert counts.preference + half > 1 and counts.preference - half > -1  # uncut, only the top leaves [-1, 1]
    assert test.ci == (pytest.approx(counts.preference - half), 1.0) and test.estimate == counts.preference


def _unanimous(d: int, prefer_b: bool = True) -> PreferenceCounts:
    """d users who clicked, all preferring one arm, none tied, among 100 + d exposed."""
    wins = (0, d) if prefer_b else (d, 0)
    return PreferenceCounts(100 + d, *wins, 0, float(d if prefer_b else -d), float(d))


def _mpmath_confidence_bound(d: int, alpha: float) -> float:
    """Lower end of {q : B(d + 1, 1) / q^d < 1 / alpha} solved numerically with mpmath, as delta = 2q - 1."""
    mpmath.mp.dps = 40

    def log_excess(q: mpmath.mpf) -> mpmath.mpf:
        return mpmath.log(mpmath.beta(d + 1, 1)) - d * mpmath.log(q) + mpmath.log(alpha)

    q = mpmath.findroot(log_excess, (mpmath.mpf("1e-30"), mpmath.mpf(1)), solver="illinois")
    return float(2 * q - 1)


@pytest.mark.parametrize("d", [1, 2, 7, 8, 40, 300])
def test_sequential_sign_test_when_every_user_prefers_one_arm_is_exact(d: int) -> None:
    """All users for one arm: the sign has no variance, so the beta-binomial mixture martingale decides;
    p = 1 / (B(d + 1, 1) 2^d) from mpmath, the interval's end solved numerically from its definition."""
    config = InterleavingConfig(sequential=True)
    mpmath.mp.dps = 40
    reference_p = float(min(1, 1 / (mpmath.beta(d + 1, 1) * mpmath.mpf(2) ** d)))
    bound = _mpmath_confidence_bound(d, 0.05)
    for prefer_b, sign in ((True, 1.0), (False, -1.0)):
        test = sequential_sign_test(_unanimous(d, prefer_b), config)
        assert test.error is None and test.estimate == sign
        assert test.p_value == pytest.approx(reference_p, rel=1e-12)
        expected_ci = (bound, 1.0) if prefer_b else (-1.0, -bound)
        assert test.ci == pytest.approx(expected_ci, rel=1e-9, abs=1e-12)
        assert (test.ci[0] > 0 or test.ci[1] < 0) == (test.p_value < 0.05)


def test_sequential_sign_test_when_every_user_prefers_one_arm_hand_checked() -> None:
    """M_d = 2^d / (d + 1): 2 of 2 users are no evidence (p 3/4, delta > 2 sqrt(0.05 / 3) - 1), 8 of 8 are
    (p 9/256), 40 of 40 overwhelmingly (41 / 2^40, where the normal mixture had no variance to work with)."""
    config = InterleavingConfig(sequential=True)
    two = sequential_sign_test(_unanimous(2), config)
    assert two.p_value == pytest.approx(0.75) and two.ci == pytest.approx((-0.7418011102528389, 1.0))
    assert sequential_sign_test(_unanimous(7), config).p_value == pytest.approx(8 / 128)
    assert sequential_sign_test(_unanimous(8), config).p_value == pytest.approx(9 / 256)
    forty = sequential_sign_test(_unanimous(40, prefer_b=False), config)
    assert forty.p_value == pytest.approx(41 / 2**40, rel=1e-12) and forty.ci[1] < -0.69
    assert sequential_sign_test(_unanimous(5000), config).p_value == 0.0  # 2^-5000 underflows, no overflow
    tied = sequential_sign_test(PreferenceCounts(10, 0, 0, 4, 0.0, 0.0), config)
    one_tied = sequential_sign_test(PreferenceCounts(10, 0, 0, 1, 0.0, 0.0), config)
    assert tied.error == messages.ZERO_VARIANCE and one_tied.error == messages.NO_UNITS


def test_analyze_switches_between_fixed_and_sequential() -> None:
    fixed = analyze_interleaving(COUNTS)
    assert fixed.sign_test == sign_test(COUNTS) and fixed.credit_test == credit_test(COUNTS)
    assert not fixed.sequential and fixed.preference == COUNTS.preference
    always_valid = analyze_interleaving(COUNTS, InterleavingConfig(sequential=True))
    assert always_valid.sequential and always_valid.sign_test.p_value > fixed.sign_test.p_value


@pytest.mark.parametrize(
    ("counts", "sign_error", "credit_error"),
    [
        (PreferenceCounts(100, 0, 0, 0, 0.0, 0.0), messages.NO_CLICKS, messages.ZERO_VARIANCE),
        (PreferenceCounts(100, 0, 0, 7, 0.0, 0.0), messages.ZERO_VARIANCE, messages.ZERO_VARIANCE),
        (PreferenceCounts(1, 0, 1, 0, 1.0, 1.0), None, messages.NO_UNITS),
    ],
)
def test_data_problems_come_back_as_error_codes(
    counts: PreferenceCounts, sign_error: str | None, credit_error: str
) -> None:
    result = analyze_interleaving(counts)
    assert result.sign_test.error == sign_error and result.credit_test.error == credit_error
    assert all(code in messages.MESSAGES for code in (sign_error, credit_error) if code)


def test_inconsistent_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        PreferenceCounts(10, 5, 5, 1, 0.0, 0.0)
    with pytest.raises(ValueError):
        InterleavingConfig(alpha=1.5)


# ---- calibration ----------------------------------------------------------------------------------------

N_EXPERIMENTS = 2000
USERS = 400


def _simulate(seed: int, p_b: float, experiments: int = N_EXPERIMENTS, users: int = USERS):
    """Clicks and credit differences (B minus A) per user: Poisson(0.8) clicks, each credited to B with p_b."""
    rng = np.random.default_rng(seed)
    clicks = rng.poisson(0.8, size=(experiments, users))
    return clicks, 2 * rng.binomial(clicks, p_b) - clicks


def _covers(ci: tuple[float, float] | None, value: float) -> bool:
    assert ci is not None
    return ci[0] <= value <= ci[1]


def _counts_rows(diffs: np.ndarray, clicks_mask: np.ndarray) -> list[PreferenceCounts]:
    ties = ((diffs == 0) & clicks_mask).sum(axis=1)
    return [
        PreferenceCounts(
            diffs.shape[1],
            int((row < 0).sum()),
            int((row > 0).sum()),
            int(t),
            float(row.sum()),
            float((row * row).sum()),
        )
        for row, t in zip(diffs, ties, strict=True)
    ]


def test_no_preference_false_positive_rates() -> None:
    clicks, diffs = _simulate(131, 0.5)
    rows = _counts_rows(diffs, clicks > 0)
    sign = np.mean([sign_test(c).p_value < 0.05 for c in rows])
    credit = np.mean([credit_test(c).p_value < 0.05 for c in rows])
    print(f"false-positive rate: sign test {sign:.3f}, credit t-test {credit:.3f}")
    assert 0.035 <= sign <= 0.065 and 0.035 <= credit <= 0.065


def test_intervals_cover_the_true_effects() -> None:
    """Clicks credited to B with p = 0.56: the credit difference has mean 0.8 (2p - 1) per user, and delta is
    computable from the Poisson click counts (a user with k clicks prefers B when more than k/2 go to B)."""
    p, rate = 0.56, 0.8
    clicks, diffs = _simulate(132, p)
    rows = _counts_rows(diffs, clicks > 0)
    true_mean = rate * (2 * p - 1)
    ks = np.arange(0, 40)
    weights = scipy_stats.poisson.pmf(ks, rate)
    prefer_b = np.array([scipy_stats.binom.sf(k // 2, k, p) for k in ks])  # more than half to B
    prefer_a = np.array([scipy_stats.binom.cdf((k - 1) // 2, k, p) if k else 0.0 for k in ks])
    true_delta = float(weights @ (prefer_b - prefer_a)) / (1 - weights[0])
    covered_credit = np.mean([_covers(credit_test(c).ci, true_mean) for c in rows])
    covered_delta = np.mean([_covers(sign_test(c).ci, true_delta) for c in rows])
    print(f"coverage: credit {covered_credit:.3f}, delta {covered_delta:.3f} (true delta {true_delta:.4f})")
    assert 0.935 <= covered_credit <= 0.965
    assert 0.93 <= covered_delta <= 0.975  # exact (conservative) interval, conditional on the tie share


def test_peeking_at_the_sequential_tests_keeps_the_error_rate() -> None:
    """Ten looks under no preference: 'significant at any look' <= alpha for the always-valid tests, well above
    it for the fixed-horizon sign test."""
    experiments, users, looks = 1000, 2000, 10
    clicks, diffs = _simulate(133, 0.5, experiments, users)
    config = InterleavingConfig(sequential=True, sequential_tuning_parameter=users)
    fixed = np.zeros(experiments, bool)
    always_valid = np.zeros(experiments, bool)
    for look in range(1, looks + 1):
        upto = users * look // looks
        rows = _counts_rows(diffs[:, :upto], clicks[:, :upto] > 0)
        fixed |= [sign_test(c).p_value < 0.05 for c in rows]
        always_valid |= [
            min(sequential_sign_test(c, config).p_value, sequential_credit_test(c, config).p_value) < 0.05
            for c in rows
        ]
    print(
        f"any-look error: fixed sign test {fixed.mean():.3f}, sequential (either test) {always_valid.mean():.3f}"
    )
    assert fixed.mean() > 0.1
    assert always_valid.mean() <= 0.05


def test_a_real_preference_is_detected() -> None:
    clicks, diffs = _simulate(134, 0.6, experiments=500)
    rows = _counts_rows(diffs, clicks > 0)
    assert np.mean([sign_test(c).p_value < 0.05 for c in rows]) > 0.8
    assert np.mean([sign_test(c).estimate > 0 for c in rows]) > 0.99
