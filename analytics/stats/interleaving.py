"""Statistics of an interleaving experiment: which arm do users prefer when they see both?

Each user of an interleaving experiment saw lists merged from arms A and B (team draft); every click is
credited to the arm that supplied the clicked item (``analytics.interleaving`` is the reference for that
step). Per user u, with c_A(u) and c_B(u) the clicks credited to each arm over all their requests:

* u prefers B when c_B > c_A, A when c_A > c_B, and is a tie when both are equal and u clicked at all;
  users without a credited click express no preference.
* d_u = c_B - c_A is the per-user credit difference (0 for users without clicks).

Sufficient statistics (``PreferenceCounts``): n exposed users, wins_a, wins_b, ties, and the sum and sum of
squares of d_u over the n users. The preference share is

    delta = (wins_b - wins_a) / (wins_a + wins_b + ties)        in [-1, 1], > 0 when users prefer B

(Chapelle et al. 2012, "Large-scale validation and analysis of interleaved search evaluation", report
delta / 2). Two tests:

* Sign test (``sign_test``): under no preference each user who is not tied prefers B with probability 1/2,
  so wins_b ~ Binomial(wins_a + wins_b, 1/2). Exact two-sided p-value (twice the smaller tail, at most 1).
  Interval: the Clopper-Pearson interval of q = P(B | not tied), mapped to the delta scale with the observed
  share s of non-tied users among those who clicked: delta = s (2q - 1). Being central, the interval
  excludes 0 exactly when p < alpha.
* Credit test (``credit_test``): one-sample t-test of the mean of d_u over all n exposed users (n - 1
  degrees of freedom); estimate = mean credit difference per user (clicks, B minus A).

Sequential mode (``sequential=True``) replaces both with the always-valid normal-mixture confidence sequence
the A/B path uses (``analytics.stats.frequentist.tests``): on the mean of the per-user sign (-1, 0, 1) over
the m users who clicked (whose mean is delta; its interval is cut to delta's range [-1, 1], which early on,
with few users, it can exceed) and on the mean of d_u over n users. Safe under continuous peeking; asymptotic,
like the A/B path's.

One case the normal mixture cannot take: every user who clicked prefers the same arm (k = d wins of d decided
users, or k = 0, no ties). The per-user sign then has no variance, yet the evidence can be overwhelming (40
of 40 users for B: fixed-horizon p ~ 2e-12). There the sequential sign test is exact instead: the beta-binomial
mixture martingale of Robbins (uniform Beta(1, 1) prior on q = P(B | decided)),

    M_d = B(k + 1, d - k + 1) * 2^d,    always-valid p = min(1, 1 / M_d)  (Ville's inequality),

whose confidence sequence {q : B(k + 1, d - k + 1) / (q^k (1 - q)^(d - k)) < 1 / alpha} is, for k = d, the
interval q > (alpha / (d + 1))^(1 / d) (mirrored for k = 0), mapped to delta as the fixed test does (share 1:
nobody is tied). It excludes 0 exactly when p < alpha. With M_d = 2^d / (d + 1), 2 of 2 users give p = 0.75,
and p < 0.05 first at 8 of 8.

Why only there, not for every sequential sign test: the uniform prior is tightest at a handful of users and
ignores ``sequential_tuning_parameter``; at the tuned size its interval is wider (5000 users, no preference:
half-width 0.053 against the normal mixture's 0.043 at the default tuning), and switching would change every
existing sequential result. The price of the switch: the exact branch rejects only while all decided users
agree, which under no preference happens past the 8th of them with probability 2^-7 ~ 0.008 at most (at
alpha 0.05), so the worst-case any-look error is below alpha + 0.008 (the normal mixture alone is
conservative: simulated with a look after each of 2000 users and no ties, 0.020 alone and 0.028 together at
tuning 2000; 0.009 and 0.017 at the default 5000).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from scipy import special

from analytics.stats import messages
from analytics.stats.frequentist.tests import mixture_rho_squared, sequential_half_width, sequential_p_value
from analytics.stats.models.settings import DEFAULT_SEQUENTIAL_TUNING_PARAMETER, check_frequentist
from analytics.stats.models.statistics import PreferenceCounts


@dataclass(frozen=True)
class InterleavingConfig:
    """Level of the intervals, and fixed-horizon or sequential (always-valid) tests."""

    alpha: float = 0.05
    sequential: bool = False
    sequential_tuning_parameter: float = DEFAULT_SEQUENTIAL_TUNING_PARAMETER

    def __post_init__(self) -> None:
        check_frequentist(self.alpha, self.sequential_tuning_parameter)


@dataclass(frozen=True)
class PreferenceTest:
    """One test's estimate, interval and two-sided p-value; ``error`` instead when the data cannot tell."""

    estimate: float | None = None
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    se: float | None = None
    df: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class InterleavingResult:
    """Preference share delta with the sign test, and the mean credit difference with the credit test."""

    counts: PreferenceCounts
    preference: float
    sign_test: PreferenceTest
    credit_test: PreferenceTest
    sequential: bool


def _binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair trials: twice the smaller tail, at most 1."""
    lower = special.bdtr(k, n, 0.5)  # P(X <= k)
    upper = special.bdtrc(k - 1, n, 0.5) if k > 0 else 1.0  # P(X >= k)
    return float(min(1.0, 2.0 * min(lower, upper)))


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Central exact interval for a binomial proportion with k successes in n trials (n >= 1)."""
    low = float(special.betaincinv(k, n - k + 1, alpha / 2)) if k > 0 else 0.0
    high = float(special.betaincinv(k + 1, n - k, 1 - alpha / 2)) if k < n else 1.0
    return low, high


def sign_test(counts: PreferenceCounts, alpha: float = 0.05) -> PreferenceTest:
    """Exact binomial sign test over users who are not tied; interval for delta (see the module docstring)."""
    decided = counts.wins_a + counts.wins_b
    if counts.clicked == 0:
        return PreferenceTest(error=messages.NO_CLICKS)
    if decided == 0:
        return PreferenceTest(error=messages.ZERO_VARIANCE)
    share = decided / counts.clicked
    low, high = clopper_pearson(counts.wins_b, decided, alpha)
    return PreferenceTest(
        estimate=counts.preference,
        ci=(share * (2 * low - 1), share * (2 * high - 1)),
        p_value=_binomial_two_sided(counts.wins_b, decided),
    )


def credit_test(counts: PreferenceCounts, alpha: float = 0.05) -> PreferenceTest:
    """One-sample t-test of the mean per-user credit difference (B minus A) over all exposed users."""
    if counts.n <= 1:
        return PreferenceTest(error=messages.NO_UNITS)
    variance = counts.credit_diff_variance
    if variance == 0:
        return PreferenceTest(error=messages.ZERO_VARIANCE)
    mean, se, df = counts.credit_diff_mean, math.sqrt(variance / counts.n), counts.n - 1.0
    half = float(special.stdtrit(df, 1 - alpha / 2)) * se
    p_value = float(2 * special.stdtr(df, -abs(mean / se)))
    return PreferenceTest(estimate=mean, ci=(mean - half, mean + half), p_value=p_value, se=se, df=df)


def _sequential(estimate: float, variance: float, units: int, config: InterleavingConfig) -> PreferenceTest:
    """The normal-mixture confidence sequence around a mean of ``units`` per-user values."""
    se = math.sqrt(variance / units)
    rho_squared = mixture_rho_squared(config.alpha, config.sequential_tuning_parameter)
    half = sequential_half_width(se, units, config.alpha, rho_squared)
    p_value = sequential_p_value(estimate, se, units, rho_squared)
    return PreferenceTest(estimate=estimate, ci=(estimate - half, estimate + half), p_value=p_value, se=se)


def beta_binomial_p_value(k: int, d: int) -> float:
    """Always-valid p-value 1 / M_d of k B-wins in d decided users: Robbins' uniform-prior mixture martingale."""
    log_martingale = float(special.betaln(k + 1, d - k + 1)) + d * math.log(2.0)
    return min(1.0, math.exp(-log_martingale))


def unanimous_sequential_sign_test(counts: PreferenceCounts, alpha: float) -> PreferenceTest:
    """Exact always-valid test when every user who clicked prefers the same arm (see the module docstring)."""
    decided = counts.wins_a + counts.wins_b
    low = 2.0 * (alpha / (decided + 1)) ** (1.0 / decided) - 1.0  # delta's bound when all prefer B
    return PreferenceTest(
        estimate=counts.preference,
        ci=(low, 1.0) if counts.wins_b else (-1.0, -low),
        p_value=beta_binomial_p_value(counts.wins_b, decided),
    )


def sequential_sign_test(counts: PreferenceCounts, config: InterleavingConfig) -> PreferenceTest:
    """Always-valid interval and p-value for delta, the mean per-user sign over the users who clicked."""
    if counts.clicked == 0:
        return PreferenceTest(error=messages.NO_CLICKS)
    if counts.ties == 0 and min(counts.wins_a, counts.wins_b) == 0:
        return unanimous_sequential_sign_test(counts, config.alpha)
    if counts.clicked <= 1:
        return PreferenceTest(error=messages.NO_UNITS)
    if counts.sign_variance == 0:
        return PreferenceTest(error=messages.ZERO_VARIANCE)
    test = _sequential(counts.preference, counts.sign_variance, counts.clicked, config)
    if test.ci is None:  # _sequential always sets it
        raise AssertionError("the sequential test has no interval")
    # delta lies in [-1, 1]: the part of the normal interval outside it holds no value delta can take.
    low, high = test.ci
    return replace(test, ci=(max(-1.0, low), min(1.0, high)))


def sequential_credit_test(counts: PreferenceCounts, config: InterleavingConfig) -> PreferenceTest:
    """Always-valid interval and p-value for the mean per-user credit difference."""
    if counts.n <= 1:
        return PreferenceTest(error=messages.NO_UNITS)
    if counts.credit_diff_variance == 0:
        return PreferenceTest(error=messages.ZERO_VARIANCE)
    return _sequential(counts.credit_diff_mean, counts.credit_diff_variance, counts.n, config)


def analyze_interleaving(
    counts: PreferenceCounts, config: InterleavingConfig | None = None
) -> InterleavingResult:
    """Both tests, fixed-horizon or sequential as ``config`` says."""
    config = config or InterleavingConfig()
    if config.sequential:
        sign, credit = sequential_sign_test(counts, config), sequential_credit_test(counts, config)
    else:
        sign, credit = sign_test(counts, config.alpha), credit_test(counts, config.alpha)
    return InterleavingResult(counts, counts.preference, sign, credit, config.sequential)
