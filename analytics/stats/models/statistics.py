"""Sufficient statistics per variant: the only thing the tests ever see of the raw data.

Each class is frozen, merges with ``+`` (daily or per-partition aggregates add up) and derives mean and
variance as properties. Variance guards return 0 for n <= 1 instead of raising, so a thin arm turns into an
error code in the result rather than an exception.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace

import numpy as np

_ROUNDING_PER_UNIT = 3.0 * sys.float_info.epsilon
"""Bound on the rounding error, relative to the raw sums of squares and per unit summed, of a centred sum of
squares taken from raw sums (sum of squares minus sum^2 / n): a naive sum of n floats (np.bincount, SQL SUM)
may be off by n eps of its magnitude, and sum^2 / n by twice that."""


def _resolved(variance: float, n: float, root_magnitude: float) -> float:
    """``variance`` (a centred sum of squares from raw sums over n - 1), or 0 within its rounding error.

    ``root_magnitude`` is the square root of the raw sum of squares it comes from. Below the bound the value
    is rounding residue, not spread: 1000 values of 0.3 left 8.5e-17, so two constant arms (0.1 and 0.3) got
    p = 0 and an interval 1e-9 wide instead of ZERO_VARIANCE, which constants of 1 and 2 got.
    """
    if variance <= 0 or math.sqrt(variance) <= math.sqrt(_ROUNDING_PER_UNIT * n / (n - 1)) * root_magnitude:
        return 0.0
    return variance  # NaN and inf pass on: data_error reports them as NUMERIC_OVERFLOW


def _root(sum_squares: float) -> float:
    """Square root of a raw sum of squares; of its size, so that an impossible negative one given by a caller
    gives no variance rather than a math domain error."""
    return math.sqrt(abs(sum_squares))


def _sample_variance(n: float, total: float, total_squares: float) -> float:
    """Unbiased variance from sums; 0 when it cannot be estimated (n <= 1) or is within rounding of 0."""
    if n <= 1:
        return 0.0
    return _resolved((total_squares - total * total / n) / (n - 1), n, _root(total_squares))


def _sample_covariance(n: float, sum_x: float, sum_y: float, sum_xy: float) -> float:
    """Unbiased covariance from sums; 0 when n <= 1."""
    if n <= 1:
        return 0.0
    return (sum_xy - sum_x * sum_y / n) / (n - 1)


def _check_same_kind(left: object, right: object) -> None:
    if type(left) is not type(right):
        raise TypeError(f"cannot add {type(right).__name__} to {type(left).__name__}")


@dataclass(frozen=True)
class SampleMean:
    """Per-unit values of a count, mean or continuous metric: n, sum and sum of squares."""

    n: int
    sum: float
    sum_squares: float

    @classmethod
    def from_values(cls, values: np.ndarray) -> SampleMean:
        """Summarise one value per unit."""
        values = np.asarray(values, dtype=np.float64)
        return cls(n=int(values.size), sum=float(values.sum()), sum_squares=float(np.dot(values, values)))

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n > 0 else 0.0

    @property
    def variance(self) -> float:
        return _sample_variance(self.n, self.sum, self.sum_squares)

    @property
    def unadjusted_mean(self) -> float:
        return self.mean

    def __add__(self, other: SampleMean) -> SampleMean:
        _check_same_kind(self, other)
        return SampleMean(self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares)


@dataclass(frozen=True)
class Proportion:
    """Share of units that converted: n and the number of converters; variance p(1 - p)."""

    n: int
    sum: float

    @classmethod
    def from_values(cls, values: np.ndarray) -> Proportion:
        """Summarise one 0/1 value per unit."""
        values = np.asarray(values, dtype=np.float64)
        return cls(n=int(values.size), sum=float(values.sum()))

    @property
    def sum_squares(self) -> float:
        return self.sum

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n > 0 else 0.0

    @property
    def variance(self) -> float:
        if self.n <= 1:
            return 0.0
        p = self.mean
        return p * (1.0 - p)

    @property
    def unadjusted_mean(self) -> float:
        return self.mean

    def __add__(self, other: Proportion) -> Proportion:
        _check_same_kind(self, other)
        return Proportion(self.n + other.n, self.sum + other.sum)


@dataclass(frozen=True)
class Ratio:
    """Ratio of two per-unit sums (clicks / impressions), with the cross product for the delta method.

    The unit of randomisation is the user, the unit of analysis is the denominator, so the variance of
    sum(num) / sum(den) comes from the delta method over the per-user pairs.
    """

    n: int
    numerator: SampleMean
    denominator: SampleMean
    num_den_sum_product: float

    @classmethod
    def from_values(cls, numerator: np.ndarray, denominator: np.ndarray) -> Ratio:
        """Summarise one (numerator, denominator) pair per unit."""
        num = np.asarray(numerator, dtype=np.float64)
        den = np.asarray(denominator, dtype=np.float64)
        return cls(
            n=int(num.size),
            numerator=SampleMean.from_values(num),
            denominator=SampleMean.from_values(den),
            num_den_sum_product=float(np.dot(num, den)),
        )

    @property
    def mean(self) -> float:
        return self.numerator.sum / self.denominator.sum if self.denominator.sum != 0 else 0.0

    @property
    def unadjusted_mean(self) -> float:
        return self.mean

    @property
    def covariance(self) -> float:
        return _sample_covariance(self.n, self.numerator.sum, self.denominator.sum, self.num_den_sum_product)

    @property
    def variance(self) -> float:
        """Per-unit variance of the ratio (delta method): divide by n for the variance of the estimate."""
        mean_den = self.denominator.mean
        if self.n <= 1 or mean_den == 0:
            return 0.0
        # var(num - R den) / mean_den^2 with R = mean_num / mean_den, in that order: mean_den^4 underflowed
        # to 0 for denominators in units of 1e-100 (ZeroDivisionError), and overflowed for 1e100
        ratio = self.numerator.mean / mean_den
        spread = (
            self.numerator.variance
            - 2.0 * ratio * self.covariance
            + (ratio * math.sqrt(self.denominator.variance)) ** 2
        )
        # the centred sum of squares of num - R den, over (n - 1) mean_den^2
        root_magnitude = _root(self.numerator.sum_squares) + abs(ratio) * _root(self.denominator.sum_squares)
        return _resolved(spread / mean_den / mean_den, self.n, root_magnitude / abs(mean_den))

    def __add__(self, other: Ratio) -> Ratio:
        _check_same_kind(self, other)
        return Ratio(
            self.n + other.n,
            self.numerator + other.numerator,
            self.denominator + other.denominator,
            self.num_den_sum_product + other.num_den_sum_product,
        )


@dataclass(frozen=True)
class CupedMean:
    """Post-exposure metric with its pre-exposure covariate (CUPED / regression adjustment).

    ``theta`` and ``pooled_pre_mean`` are estimated over all arms together and set with ``with_pooled``
    (the tests do it when they get unpooled statistics); until then ``theta`` is None and the statistic is
    unadjusted.
    """

    n: int
    post: SampleMean
    pre: SampleMean
    post_pre_sum_product: float
    theta: float | None = None
    pooled_pre_mean: float = 0.0

    @classmethod
    def from_values(cls, post: np.ndarray, pre: np.ndarray) -> CupedMean:
        """Summarise one (post, pre) pair per unit."""
        post = np.asarray(post, dtype=np.float64)
        pre = np.asarray(pre, dtype=np.float64)
        return cls(
            n=int(post.size),
            post=SampleMean.from_values(post),
            pre=SampleMean.from_values(pre),
            post_pre_sum_product=float(np.dot(post, pre)),
        )

    @property
    def covariance(self) -> float:
        return _sample_covariance(self.n, self.post.sum, self.pre.sum, self.post_pre_sum_product)

    @property
    def unadjusted_mean(self) -> float:
        return self.post.mean

    @property
    def mean(self) -> float:
        """Adjusted mean: centred on the pooled pre mean so that its level stays comparable to the raw one."""
        theta = self.theta or 0.0
        return self.post.mean - theta * (self.pre.mean - self.pooled_pre_mean)

    @property
    def variance(self) -> float:
        """Per-unit variance of post - theta * pre (theta treated as fixed)."""
        if self.n <= 1:
            return 0.0
        theta = self.theta or 0.0
        variance = self.post.variance + theta**2 * self.pre.variance - 2.0 * theta * self.covariance
        root_magnitude = _root(self.post.sum_squares) + abs(theta) * _root(self.pre.sum_squares)
        return _resolved(variance, self.n, root_magnitude)

    def with_pooled(self, theta: float, pooled_pre_mean: float) -> CupedMean:
        """Copy carrying the theta and pre mean estimated over all arms."""
        return replace(self, theta=theta, pooled_pre_mean=pooled_pre_mean)

    def __add__(self, other: CupedMean) -> CupedMean:
        _check_same_kind(self, other)
        return CupedMean(
            self.n + other.n,
            self.post + other.post,
            self.pre + other.pre,
            self.post_pre_sum_product + other.post_pre_sum_product,
        )


def pooled_theta(stats: list[CupedMean]) -> tuple[float, float]:
    """CUPED theta = cov(post, pre) / var(pre) over all arms merged, and the pooled pre mean.

    Pooling across arms keeps theta independent of the treatment assignment, so the adjustment cannot
    absorb part of the treatment effect. Returns theta 0 when the covariate has no variance.
    """
    merged = stats[0]
    for stat in stats[1:]:
        merged = merged + stat
    pre_variance = merged.pre.variance
    theta = merged.covariance / pre_variance if pre_variance > 0 else 0.0
    return theta, merged.pre.mean


TestStatistic = SampleMean | Proportion | Ratio | CupedMean


@dataclass(frozen=True)
class PreferenceCounts:
    """Per-user preference of one interleaving experiment, summed over users (merge with ``+``); the tests are in
    ``analytics.stats.interleaving``."""

    n: int
    wins_a: int
    wins_b: int
    ties: int
    credit_diff_sum: float
    credit_diff_sum_squares: float

    def __post_init__(self) -> None:
        if (
            min(self.n, self.wins_a, self.wins_b, self.ties) < 0
            or self.wins_a + self.wins_b + self.ties > self.n
        ):
            raise ValueError(f"inconsistent counts: {self}")

    @property
    def clicked(self) -> int:
        """Users with at least one credited click: the denominator of delta."""
        return self.wins_a + self.wins_b + self.ties

    @property
    def preference(self) -> float:
        """delta = (wins_b - wins_a) / (wins_a + wins_b + ties); 0 when nobody clicked."""
        return (self.wins_b - self.wins_a) / self.clicked if self.clicked else 0.0

    @property
    def credit_diff(self) -> SampleMean:
        """d_u = credit_b - credit_a over the n users, as a mean statistic (its mean and unbiased variance)."""
        return SampleMean(self.n, self.credit_diff_sum, self.credit_diff_sum_squares)

    @property
    def credit_diff_mean(self) -> float:
        return self.credit_diff.mean

    @property
    def credit_diff_variance(self) -> float:
        """Unbiased variance of d_u over the n users; 0 when n <= 1."""
        return self.credit_diff.variance

    @property
    def sign_variance(self) -> float:
        """Unbiased variance of the per-user sign (-1, 0, 1) over the users who clicked; 0 when <= 1 of them."""
        m = self.clicked
        if m <= 1:
            return 0.0
        return max((self.wins_a + self.wins_b - m * self.preference**2) / (m - 1), 0.0)

    def __add__(self, other: PreferenceCounts) -> PreferenceCounts:
        _check_same_kind(self, other)
        return PreferenceCounts(
            self.n + other.n,
            self.wins_a + other.wins_a,
            self.wins_b + other.wins_b,
            self.ties + other.ties,
            self.credit_diff_sum + other.credit_diff_sum,
            self.credit_diff_sum_squares + other.credit_diff_sum_squares,
        )
