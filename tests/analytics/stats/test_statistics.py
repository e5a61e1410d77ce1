"""Sufficient statistics: equivalence with numpy on raw arrays, merging, and the n <= 1 guards."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.stats.models.statistics import CupedMean, Proportion, Ratio, SampleMean, pooled_theta

RNG = np.random.default_rng(20261123)
X = RNG.exponential(3.0, size=501)
Y = 0.5 * X + RNG.normal(size=501)
BITS = (RNG.random(501) < 0.3).astype(float)


def test_sample_mean_matches_numpy() -> None:
    stat = SampleMean.from_values(X)
    assert stat.n == 501
    assert stat.mean == pytest.approx(np.mean(X), rel=1e-12)
    assert stat.variance == pytest.approx(np.var(X, ddof=1), rel=1e-10)


def test_sample_mean_hard_coded() -> None:
    stat = SampleMean(n=4, sum=10.0, sum_squares=30.0)  # values 1, 2, 3, 4
    assert round(stat.mean, 6) == 2.5
    assert round(stat.variance, 6) == 1.666667


def test_proportion_variance_is_p_one_minus_p() -> None:
    stat = Proportion.from_values(BITS)
    p = BITS.mean()
    assert stat.mean == pytest.approx(p)
    assert stat.variance == pytest.approx(p * (1 - p))
    assert stat.sum_squares == stat.sum


def test_ratio_delta_method_matches_linearisation() -> None:
    """Delta-method variance equals the variance of the linearised per-unit values (num - R den) / mean(den)."""
    num, den = Y + 3.0, X + 1.0
    stat = Ratio.from_values(num, den)
    ratio = num.sum() / den.sum()
    linearised = (num - ratio * den) / den.mean()
    assert stat.mean == pytest.approx(ratio, rel=1e-12)
    assert stat.covariance == pytest.approx(np.cov(num, den, ddof=1)[0, 1], rel=1e-10)
    assert stat.variance == pytest.approx(np.var(linearised, ddof=1), rel=1e-9)


def test_cuped_matches_numpy_adjusted_values() -> None:
    stat = CupedMean.from_values(Y, X)
    theta, pre_mean = pooled_theta([stat])
    assert theta == pytest.approx(np.cov(Y, X, ddof=1)[0, 1] / np.var(X, ddof=1), rel=1e-10)
    adjusted = stat.with_pooled(theta, pre_mean)
    values = Y - theta * (X - X.mean())
    assert adjusted.mean == pytest.approx(values.mean(), rel=1e-10)
    assert adjusted.variance == pytest.approx(np.var(values, ddof=1), rel=1e-9)
    assert adjusted.variance < stat.variance
    assert stat.unadjusted_mean == pytest.approx(Y.mean())


@pytest.mark.parametrize(
    "make",
    [
        lambda v, w: SampleMean.from_values(v),
        lambda v, w: Proportion.from_values((v > 2).astype(float)),
        lambda v, w: Ratio.from_values(v, w + 1.0),
        lambda v, w: CupedMean.from_values(v, w),
    ],
    ids=["mean", "proportion", "ratio", "cuped"],
)
def test_add_merges_partitions(make) -> None:
    whole = make(X, Y)
    merged = make(X[:200], Y[:200]) + make(X[200:], Y[200:])
    assert merged.n == whole.n
    assert merged.mean == pytest.approx(whole.mean, rel=1e-12)
    assert merged.variance == pytest.approx(whole.variance, rel=1e-9)


def test_add_refuses_other_kinds() -> None:
    with pytest.raises(TypeError, match="cannot add Proportion to SampleMean"):
        SampleMean(2, 1.0, 1.0) + Proportion(2, 1.0)


@pytest.mark.parametrize(
    "stat",
    [
        SampleMean(1, 5.0, 25.0),
        SampleMean(0, 0.0, 0.0),
        Proportion(1, 1.0),
        Ratio(1, SampleMean(1, 1.0, 1.0), SampleMean(1, 2.0, 4.0), 2.0),
        Ratio(5, SampleMean(5, 1.0, 1.0), SampleMean(5, 0.0, 0.0), 0.0),
        CupedMean(1, SampleMean(1, 1.0, 1.0), SampleMean(1, 1.0, 1.0), 1.0),
    ],
)
def test_variance_guards_return_zero(stat) -> None:
    assert stat.variance == 0.0


def _constant_summed_like_the_aggregation(value: float, n: int) -> SampleMean:
    """n copies of ``value`` summed with np.bincount, as ``analytics.metrics`` aggregates arms."""
    codes, values = np.zeros(n, dtype=int), np.full(n, value)
    sums = np.bincount(codes, weights=values), np.bincount(codes, weights=values * values)
    return SampleMean(n, float(sums[0][0]), float(sums[1][0]))


def _exactly_linear_cuped() -> CupedMean:
    pre = np.random.default_rng(9).exponential(3.0, 1000)
    stat = CupedMean.from_values(0.3 * pre + 1.0, pre)
    return stat.with_pooled(*pooled_theta([stat]))


@pytest.mark.parametrize(
    "make",
    [
        lambda: SampleMean.from_values(np.full(1000, 0.3)),
        lambda: _constant_summed_like_the_aggregation(2.9, 1_000_000),
        lambda: Ratio.from_values(0.3 * (X + 1.0), X + 1.0),
        _exactly_linear_cuped,
    ],
    ids=["constant", "constant-bincount-1e6", "ratio-proportional", "cuped-exactly-linear"],
)
def test_rounding_residue_is_no_variance(make) -> None:
    """Data without spread (exact arithmetic gives variance 0: every value 0.3; 2.9 a million times; num =
    0.3 den; post = 0.3 pre + 1 with theta 0.3) got the residue of sum of squares minus sum^2 / n:
    8.5e-17, 4.1e-10, 9.0e-17 and 1.6e-15, so tests on them reported p = 0 and intervals 1e-9 wide."""
    assert make().variance == 0.0


def test_small_but_real_spread_is_kept() -> None:
    """Values 1e4 + N(0, 1): a coefficient of variation of 1e-4, far above the rounding bound (numpy's
    two-pass variance agrees to 1e-7)."""
    x = 1e4 + RNG.normal(0.0, 1.0, 100_000)
    assert SampleMean.from_values(x).variance == pytest.approx(np.var(x, ddof=1), rel=1e-6)
