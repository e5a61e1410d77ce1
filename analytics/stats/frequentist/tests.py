"""Frequentist tests: fixed-horizon Welch t-test and the always-valid sequential version.

The sequential mode uses the two-sided normal-mixture confidence sequence (Robbins' mixture, as in
Howard et al. 2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences", and the mSPRT of
Johari et al. 2017). With N = n_a + n_b units and s2 = N * Var(estimate), the half-width at level alpha is

    sqrt(s2) * sqrt((N rho^2 + 1) / (N^2 rho^2) * log((N rho^2 + 1) / alpha^2))

where the mixing variance rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / N* makes the sequence tightest at
N* total units (the tuning parameter). Inverting the boundary at the observed estimate gives the always-valid
p-value, so the interval excludes 0 exactly when p < alpha and both stay valid under continuous peeking.
"""

from __future__ import annotations

import math

from scipy import special

from analytics.stats.models.results import Difference, FrequentistResult
from analytics.stats.models.settings import FrequentistConfig
from analytics.stats.models.statistics import TestStatistic
from analytics.stats.models.tests import BaseABTest


class TTest(BaseABTest[FrequentistConfig, FrequentistResult]):
    """Welch t-test of treatment against control, absolute or relative lift."""

    def _empty(self, error: str) -> FrequentistResult:
        return FrequentistResult(
            difference_type=self.config.difference_type,
            control_mean=self.stat_a.mean,
            treatment_mean=self.stat_b.mean,
            sequential=self.config.sequential,
            error=error,
        )

    def _half_width(self, diff: Difference, alpha: float) -> float:
        # scipy.special's Student-t ufuncs: the same distribution as scipy.stats.t without its per-call
        # overhead (calibration runs thousands of tests). stdtr is the CDF, stdtrit its inverse.
        return float(special.stdtrit(diff.df, 1.0 - alpha / 2.0)) * diff.se

    def _interval_and_p_values(self, diff: Difference) -> tuple[tuple[float, float], float, float, float]:
        """Interval at the configured alpha, two-sided p, p for 'greater' and p for 'less'."""
        t_stat = diff.estimate / diff.se
        half_width = self._half_width(diff, self.config.alpha)
        return (
            (diff.estimate - half_width, diff.estimate + half_width),
            float(2.0 * special.stdtr(diff.df, -abs(t_stat))),
            float(special.stdtr(diff.df, -t_stat)),
            float(special.stdtr(diff.df, t_stat)),
        )

    def interval(self, alpha: float) -> tuple[float, float] | None:
        """The interval at level ``alpha`` instead of the configured one (None where the test has no result).

        It excludes 0 exactly when the test's p-value is below ``alpha``: what a multiple-testing correction
        needs to draw an interval that agrees with its adjusted p-value (``multiple_testing.interval_levels``).
        """
        if self.data_error() is not None:
            return None
        diff = self.difference()
        half_width = self._half_width(diff, alpha)
        return diff.estimate - half_width, diff.estimate + half_width

    def compute_result(self) -> FrequentistResult:
        error = self.data_error()
        if error is not None:
            return self._empty(error)
        diff = self.difference()
        ci, p_value, p_greater, p_less = self._interval_and_p_values(diff)
        return FrequentistResult(
            difference_type=self.config.difference_type,
            control_mean=self.stat_a.mean,
            treatment_mean=self.stat_b.mean,
            estimate=diff.estimate,
            ci=ci,
            se=diff.se,
            df=diff.df,
            p_value=p_value,
            p_value_greater=p_greater,
            p_value_less=p_less,
            sequential=self.config.sequential,
        )


def mixture_rho_squared(alpha: float, tuning_parameter: float) -> float:
    """Mixing variance that minimises the confidence-sequence width at ``tuning_parameter`` total units."""
    log_term = -2.0 * math.log(alpha)
    return (log_term + math.log(log_term + 1.0)) / tuning_parameter


def sequential_half_width(se: float, n_total: int, alpha: float, rho_squared: float) -> float:
    """Half-width of the normal-mixture confidence sequence around an estimate with standard error ``se``."""
    s2 = se**2 * n_total
    spread = n_total * rho_squared + 1.0
    return math.sqrt(s2 * spread / (n_total**2 * rho_squared) * math.log(spread / alpha**2))


def sequential_p_value(estimate: float, se: float, n_total: int, rho_squared: float) -> float:
    """Always-valid p-value: the smallest alpha whose confidence sequence excludes 0 (capped at 1)."""
    s2 = se**2 * n_total
    spread = n_total * rho_squared + 1.0
    exponent = -(estimate**2) * n_total**2 * rho_squared / (2.0 * s2 * spread)
    return min(1.0, math.sqrt(spread) * math.exp(exponent))


class SequentialTTest(TTest):
    """Always-valid interval and p-value: safe to look at after every new event."""

    def _rho_squared(self) -> float:
        return mixture_rho_squared(self.config.alpha, self.config.sequential_tuning_parameter)

    def _half_width(self, diff: Difference, alpha: float) -> float:
        # The mixture stays the one tuned at the configured alpha, the one the p-value inverts, so that the
        # sequence at another level still excludes 0 exactly when p < that level.
        n_total = self.stat_a.n + self.stat_b.n
        return sequential_half_width(diff.se, n_total, alpha, self._rho_squared())

    def _interval_and_p_values(self, diff: Difference) -> tuple[tuple[float, float], float, float, float]:
        n_total = self.stat_a.n + self.stat_b.n
        half_width = self._half_width(diff, self.config.alpha)
        p_value = sequential_p_value(diff.estimate, diff.se, n_total, self._rho_squared())
        # A one-sided rejection implies the two-sided boundary was crossed on that side, so p is a valid
        # (conservative) one-sided p-value in the direction of the estimate and 1 in the other.
        p_greater = p_value if diff.estimate > 0 else 1.0
        p_less = p_value if diff.estimate < 0 else 1.0
        return (diff.estimate - half_width, diff.estimate + half_width), p_value, p_greater, p_less


def frequentist_test(stat_a: TestStatistic, stat_b: TestStatistic, config: FrequentistConfig) -> TTest:
    """The fixed-horizon or sequential test, as the config asks."""
    cls = SequentialTTest if config.sequential else TTest
    return cls(stat_a, stat_b, config)
