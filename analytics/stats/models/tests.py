"""Shared base of the frequentist and Bayesian tests: arm means, lift and its variance.

Absolute lift: mean_b - mean_a with variance var_a/n_a + var_b/n_b. Relative lift: mean_b/mean_a - 1 with
the delta-method variance var_b/(n_b mean_a^2) + var_a mean_b^2/(n_a mean_a^4). Degrees of freedom follow
Welch-Satterthwaite over the two variance components in both cases.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from analytics.stats import messages
from analytics.stats.models.results import BayesianResult, Difference, FrequentistResult
from analytics.stats.models.settings import BayesianConfig, FrequentistConfig
from analytics.stats.models.statistics import CupedMean, Ratio, TestStatistic, pooled_theta

ConfigT = TypeVar("ConfigT", FrequentistConfig, BayesianConfig)
ResultT = TypeVar("ResultT", FrequentistResult, BayesianResult)


def welch_df(component_a: float, component_b: float, n_a: int, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom for a variance that is the sum of two arm components.

    Computed on the components divided by the larger one, as the df has no unit: squared as they are,
    components of 1e-181 underflowed to 0 (the pooled df instead of Welch's) and 1e170 overflowed.
    """
    scale = max(component_a, component_b)
    if scale == 0:
        return float(n_a + n_b - 2)
    share_a, share_b = component_a / scale, component_b / scale
    return (share_a + share_b) ** 2 / (share_a**2 / (n_a - 1) + share_b**2 / (n_b - 1))


class BaseABTest(ABC, Generic[ConfigT, ResultT]):
    """One treatment arm against control, from sufficient statistics of the same kind.

    CUPED statistics that were not pooled over all arms beforehand (``pool_cuped``) get a theta pooled over
    these two arms before anything else is computed.
    """

    def __init__(self, stat_a: TestStatistic, stat_b: TestStatistic, config: ConfigT) -> None:
        if type(stat_a) is not type(stat_b):
            raise TypeError(f"control is {type(stat_a).__name__} but treatment is {type(stat_b).__name__}")
        if isinstance(stat_a, CupedMean) and isinstance(stat_b, CupedMean):
            if stat_a.theta is None or stat_b.theta is None:
                theta, pre_mean = pooled_theta([stat_a, stat_b])
                stat_a, stat_b = stat_a.with_pooled(theta, pre_mean), stat_b.with_pooled(theta, pre_mean)
        self.stat_a = stat_a
        self.stat_b = stat_b
        self.config: ConfigT = config

    def data_error(self) -> str | None:
        """The error code that makes the comparison impossible, or None."""
        a, b = self.stat_a, self.stat_b
        if a.n <= 1 or b.n <= 1:
            return messages.NO_UNITS
        try:  # Python floats raise OverflowError on ** where numpy would give inf
            moments = (a.mean, b.mean, a.variance, b.variance)
        except OverflowError:
            return messages.NUMERIC_OVERFLOW
        if not all(math.isfinite(m) for m in moments):
            return messages.NUMERIC_OVERFLOW
        if (
            isinstance(a, Ratio)
            and isinstance(b, Ratio)
            and (a.denominator.sum == 0 or b.denominator.sum == 0)
        ):
            return messages.DENOMINATOR_ZERO
        if a.variance == 0 and b.variance == 0:
            return messages.ZERO_VARIANCE
        if self.config.difference_type == "relative" and a.mean == 0:
            return messages.BASELINE_ZERO
        if self.config.difference_type == "relative" and a.mean < 0:
            return messages.BASELINE_NEGATIVE
        try:
            difference = self.difference()
        except OverflowError:
            return messages.NUMERIC_OVERFLOW
        if not all(math.isfinite(x) for x in (difference.estimate, difference.variance, difference.df)):
            return messages.NUMERIC_OVERFLOW
        if difference.variance <= 0:  # relative lift of a treatment without a single event: -100% +- 0
            return messages.ZERO_VARIANCE
        return None

    def difference(self) -> Difference:
        """The lift in the configured difference type; call only when ``data_error()`` is None."""
        a, b = self.stat_a, self.stat_b
        if self.config.difference_type == "absolute":
            component_a, component_b = a.variance / a.n, b.variance / b.n
            estimate = b.mean - a.mean
        else:  # in ratios to the control mean: its 4th power underflows to 0 (1e-90) or overflows (1e90)
            spread_a, spread_b = math.sqrt(a.variance) / a.mean, math.sqrt(b.variance) / a.mean
            component_a = (spread_a * b.mean / a.mean) ** 2 / a.n
            component_b = spread_b**2 / b.n
            estimate = b.mean / a.mean - 1.0
        return Difference(
            estimate=estimate,
            variance=component_a + component_b,
            df=welch_df(component_a, component_b, a.n, b.n),
        )

    @abstractmethod
    def compute_result(self) -> ResultT:
        """Run the test."""
