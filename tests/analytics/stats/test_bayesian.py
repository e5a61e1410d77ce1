"""Bayesian chance-to-win: Gaussian posterior of the lift, checked against scipy.stats.norm."""

from __future__ import annotations

import pytest
from scipy import stats as scipy_stats

from analytics.stats import messages
from analytics.stats.bayesian.tests import EffectBayesianTest, expected_loss
from analytics.stats.frequentist.tests import TTest
from analytics.stats.models.settings import BayesianConfig, FrequentistConfig
from analytics.stats.models.statistics import Proportion, SampleMean

A, B = Proportion(10000, 1000.0), Proportion(10000, 1080.0)


def test_flat_prior_chance_to_win_is_normal_cdf_of_z() -> None:
    result = EffectBayesianTest(A, B, BayesianConfig(difference_type="absolute")).compute_result()
    freq = TTest(A, B, FrequentistConfig(difference_type="absolute")).compute_result()
    assert result.estimate == pytest.approx(0.008)
    assert result.chance_to_win == pytest.approx(scipy_stats.norm.cdf(freq.estimate / freq.se), rel=1e-12)
    assert round(result.chance_to_win, 6) == 0.968079  # Phi(0.008 / sqrt(0.09 / 1e4 + 0.096336 / 1e4))
    inverse = EffectBayesianTest(
        A, B, BayesianConfig(difference_type="absolute", inverse=True)
    ).compute_result()
    assert inverse.chance_to_win == pytest.approx(1 - result.chance_to_win)


def test_gaussian_prior_shrinks_towards_prior_mean() -> None:
    flat = EffectBayesianTest(A, B, BayesianConfig()).compute_result()
    prior = EffectBayesianTest(A, B, BayesianConfig(prior_variance=0.01)).compute_result()
    weight = (1 / flat.se**2) / (1 / flat.se**2 + 1 / 0.01)
    assert prior.estimate == pytest.approx(weight * flat.estimate, rel=1e-12)
    assert prior.se < flat.se


def test_expected_loss_matches_numeric_integral() -> None:
    dist = scipy_stats.norm(0.3, 1.2)
    numeric = dist.expect(lambda x: max(0.0, -x))
    assert expected_loss(0.3, 1.2) == pytest.approx(numeric, rel=1e-6)
    assert expected_loss(-0.5, 0.0) == 0.5


def test_error_code() -> None:
    result = EffectBayesianTest(Proportion(1, 0.0), B, BayesianConfig()).compute_result()
    assert result.error == messages.NO_UNITS and result.chance_to_win is None


def test_a_negative_control_mean_gives_no_relative_chance_to_win() -> None:
    """Control -5, treatment -4.5 per unit: the treatment is higher, yet the relative lift (-10%) gave a
    chance to win near 0; the absolute lift is reported as before."""
    control, treatment = SampleMean(100, -500.0, 2600.0), SampleMean(100, -450.0, 2125.0)
    relative = EffectBayesianTest(control, treatment, BayesianConfig()).compute_result()
    assert relative.error == messages.BASELINE_NEGATIVE and relative.chance_to_win is None
    absolute_config = BayesianConfig(difference_type="absolute")
    absolute = EffectBayesianTest(control, treatment, absolute_config).compute_result()
    assert absolute.error is None and absolute.estimate == pytest.approx(0.5)
    assert absolute.chance_to_win is not None and absolute.chance_to_win > 0.99


def test_a_prior_on_a_lift_with_a_variance_below_float64_range_is_the_data() -> None:
    """Means of 1e-160, so the lift's variance is ~2e-322: 1 / variance was inf, the posterior variance 0 and
    chance_to_win a ZeroDivisionError. A prior variance of 1 next to 2e-322 leaves the flat-prior posterior."""
    control, treatment = SampleMean(100, 1e-158, 2e-318), SampleMean(100, 2e-158, 5e-318)
    flat = EffectBayesianTest(control, treatment, BayesianConfig(difference_type="absolute")).compute_result()
    config = BayesianConfig(difference_type="absolute", prior_variance=1.0)
    prior = EffectBayesianTest(control, treatment, config).compute_result()
    assert flat.se is not None and flat.se**2 < 1e-308
    assert prior.error is None and prior.chance_to_win == pytest.approx(flat.chance_to_win, rel=1e-12)
    assert prior.estimate == pytest.approx(flat.estimate, rel=1e-12) and prior.se == pytest.approx(flat.se)
