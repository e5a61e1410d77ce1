"""Calibration by simulation (seeded, vectorised): error rates are what the engine claims.

Raw data are drawn as arrays, reduced to sufficient statistics with numpy, and every experiment is then
analysed by the real test classes. Rates are printed so ``pytest -s`` shows them.
"""

from __future__ import annotations

import numpy as np
import pytest

from analytics.stats.frequentist.tests import TTest, frequentist_test
from analytics.stats.models.settings import FrequentistConfig
from analytics.stats.models.statistics import Proportion, SampleMean
from analytics.stats.power import PowerInputs, power

N_EXPERIMENTS = 1000
N_PER_ARM = 1000
LOOKS = 10


def _mean_stats(values: np.ndarray) -> list[SampleMean]:
    """One SampleMean per row of ``values`` (experiments x users)."""
    sums, squares = values.sum(axis=1), (values * values).sum(axis=1)
    return [SampleMean(values.shape[1], float(s), float(q)) for s, q in zip(sums, squares, strict=True)]


def _rejection_rate(stats_a, stats_b, config: FrequentistConfig) -> float:
    results = [frequentist_test(a, b, config).compute_result() for a, b in zip(stats_a, stats_b, strict=True)]
    return float(np.mean([r.p_value < config.alpha for r in results]))


def test_aa_false_positive_rate_skewed_mean_relative() -> None:
    rng = np.random.default_rng(101)
    a = rng.exponential(2.0, size=(N_EXPERIMENTS, N_PER_ARM))
    b = rng.exponential(2.0, size=(N_EXPERIMENTS, N_PER_ARM))
    rate = _rejection_rate(_mean_stats(a), _mean_stats(b), FrequentistConfig(difference_type="relative"))
    print(f"A/A false-positive rate, exponential mean, relative lift: {rate:.3f}")
    assert 0.035 <= rate <= 0.065


def test_aa_false_positive_rate_binomial_absolute() -> None:
    rng = np.random.default_rng(102)
    conversions = rng.binomial(N_PER_ARM, 0.1, size=(2, N_EXPERIMENTS))
    stats_a = [Proportion(N_PER_ARM, float(c)) for c in conversions[0]]
    stats_b = [Proportion(N_PER_ARM, float(c)) for c in conversions[1]]
    rate = _rejection_rate(stats_a, stats_b, FrequentistConfig(difference_type="absolute"))
    print(f"A/A false-positive rate, binomial, absolute lift: {rate:.3f}")
    assert 0.035 <= rate <= 0.065


def test_peeking_inflates_fixed_horizon_but_not_sequential() -> None:
    """Ten interim looks: 'significant at any look' is ~20% for the fixed test and <= 5% for sequential."""
    rng = np.random.default_rng(103)
    chunk = N_PER_ARM // LOOKS

    def cumulative(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blocks = values.reshape(N_EXPERIMENTS, LOOKS, chunk)
        return np.cumsum(blocks.sum(axis=2), axis=1), np.cumsum((blocks * blocks).sum(axis=2), axis=1)

    sum_a, sq_a = cumulative(rng.normal(1.0, 1.0, size=(N_EXPERIMENTS, N_PER_ARM)))
    sum_b, sq_b = cumulative(rng.normal(1.0, 1.0, size=(N_EXPERIMENTS, N_PER_ARM)))
    configs = {
        "fixed": FrequentistConfig(difference_type="absolute"),
        "sequential": FrequentistConfig(difference_type="absolute", sequential=True),
    }
    ever = {name: np.zeros(N_EXPERIMENTS, dtype=bool) for name in configs}
    final = {}
    for look in range(LOOKS):
        n = chunk * (look + 1)
        for name, config in configs.items():
            rejected = [
                frequentist_test(
                    SampleMean(n, sum_a[e, look], sq_a[e, look]),
                    SampleMean(n, sum_b[e, look], sq_b[e, look]),
                    config,
                )
                .compute_result()
                .p_value
                < config.alpha
                for e in range(N_EXPERIMENTS)
            ]
            ever[name] |= np.asarray(rejected)
            final[name] = float(np.mean(rejected))
    fixed_rate, sequential_rate = float(ever["fixed"].mean()), float(ever["sequential"].mean())
    print(f"10 looks: fixed-horizon {fixed_rate:.3f}, sequential {sequential_rate:.3f}; final look {final}")
    assert 0.035 <= final["fixed"] <= 0.065
    assert fixed_rate > 0.10
    assert sequential_rate <= 0.05


def test_detection_rate_matches_power_calculator() -> None:
    rng = np.random.default_rng(104)
    delta, sd = 1.0, 10.0
    predicted = power(
        PowerInputs(
            metric_type="mean", baseline_mean=10.0, baseline_variance=sd**2, difference_type="absolute"
        ),
        2 * N_PER_ARM,
        delta,
    )
    a = rng.normal(10.0, sd, size=(N_EXPERIMENTS, N_PER_ARM))
    b = rng.normal(10.0 + delta, sd, size=(N_EXPERIMENTS, N_PER_ARM))
    observed = _rejection_rate(_mean_stats(a), _mean_stats(b), FrequentistConfig(difference_type="absolute"))
    print(f"power: predicted {predicted:.3f}, observed {observed:.3f}")
    assert 0.4 < predicted < 0.8
    assert observed == pytest.approx(predicted, abs=0.05)


def test_relative_interval_covers_true_lift() -> None:
    rng = np.random.default_rng(105)
    true_lift = 0.10
    a = rng.exponential(2.0, size=(N_EXPERIMENTS, N_PER_ARM))
    b = rng.exponential(2.0 * (1 + true_lift), size=(N_EXPERIMENTS, N_PER_ARM))
    config = FrequentistConfig(difference_type="relative")
    results = [
        TTest(x, y, config).compute_result() for x, y in zip(_mean_stats(a), _mean_stats(b), strict=True)
    ]
    coverage = float(np.mean([r.ci[0] <= true_lift <= r.ci[1] for r in results]))
    print(f"relative-lift 95% interval coverage: {coverage:.3f}")
    assert 0.93 <= coverage <= 0.97
