"""Power, MDE and sample size against the closed-form normal approximation."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from analytics.stats.power import PowerInputs, minimum_detectable_effect, power, required_sample_size

BINOMIAL = PowerInputs(metric_type="binomial", baseline_mean=0.10)
MEAN = PowerInputs(
    metric_type="mean", baseline_mean=20.0, baseline_variance=100.0, difference_type="absolute"
)


def closed_form_power(
    delta: float, var_a: float, var_b: float, n_a: float, n_b: float, alpha: float
) -> float:
    se = math.sqrt(var_a / n_a + var_b / n_b)
    z = scipy_stats.norm.ppf(1 - alpha / 2)
    return scipy_stats.norm.cdf(delta / se - z) + scipy_stats.norm.cdf(-delta / se - z)


def test_power_matches_closed_form() -> None:
    assert power(MEAN, 2000, 1.0) == pytest.approx(
        closed_form_power(1.0, 100, 100, 1000, 1000, 0.05), rel=1e-9
    )
    assert power(BINOMIAL, 20000, 0.1) == pytest.approx(
        closed_form_power(0.01, 0.09, 0.11 * 0.89, 10000, 10000, 0.05), rel=1e-9
    )


def test_unequal_split() -> None:
    inputs = PowerInputs(metric_type="mean", baseline_mean=20.0, baseline_variance=100.0, weights=(0.8, 0.2))
    expected = closed_form_power(1.0, 100, 100, 8000, 2000, 0.05)
    assert power(inputs, 10000, 0.05) == pytest.approx(expected, rel=1e-9)


def test_required_sample_size_textbook() -> None:
    # (z_0.975 + z_0.8)^2 (0.1*0.9 + 0.11*0.89) / 0.01^2 = 14,748 per arm
    assert required_sample_size(BINOMIAL, 0.10, 0.8) == pytest.approx(2 * 14748, abs=4)


def test_mde_round_trip() -> None:
    mde = minimum_detectable_effect(MEAN, 2000, 0.8)
    assert power(MEAN, 2000, mde) == pytest.approx(0.8, abs=1e-6)
    # two-sided: (z_0.975 + z_0.8) * sqrt(2 * 100 / 1000), the far tail adds almost nothing
    assert mde == pytest.approx(2.8016 * math.sqrt(0.2), rel=1e-3)


def test_one_sided_alternative() -> None:
    inputs = PowerInputs(
        metric_type="mean", baseline_mean=20.0, baseline_variance=100.0, alternative="greater"
    )
    se = math.sqrt(0.2)
    expected = scipy_stats.norm.cdf(1.0 / se - scipy_stats.norm.ppf(0.95))
    assert power(inputs, 2000, 0.05) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric_type": "mean", "baseline_mean": 1.0}, "baseline_variance"),
        ({"metric_type": "binomial", "baseline_mean": 1.5}, r"\(0, 1\)"),
        ({"metric_type": "binomial", "baseline_mean": 0.1, "weights": (1.0, 0.0)}, "weights"),
    ],
)
def test_inputs_validate(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        PowerInputs(**kwargs)


def test_unreachable_power_is_reported() -> None:
    with pytest.raises(ValueError, match="no effect"):
        minimum_detectable_effect(PowerInputs(metric_type="binomial", baseline_mean=0.9), 10, 0.99)


def test_mde_for_alternative_less_is_a_drop() -> None:
    """A one-sided 'less' test detects drops, so its MDE is negative (the old code searched rises and raised).

    Mean, sd 10, 1000 per arm: -(z_0.95 + z_0.8) * sqrt(2 * 100 / 1000) = -1.111985 (statsmodels
    NormalIndPower.solve_power(nobs1=1000, alternative="smaller") gives effect size -0.111197, to its
    tolerance). Binomial, baseline 0.10, 10000 per arm: the p1 < 0.1 with
    Phi((0.1 - p1) / sqrt(0.09/1e4 + p1 (1 - p1)/1e4) - z_0.95) = 0.8 is 0.0896983, a relative lift of -0.1030171.
    """
    inputs = PowerInputs(
        metric_type="mean",
        baseline_mean=20.0,
        baseline_variance=100.0,
        difference_type="absolute",
        alternative="less",
    )
    assert minimum_detectable_effect(inputs, 2000, 0.8) == pytest.approx(-1.111985, abs=1e-6)
    binomial = PowerInputs(metric_type="binomial", baseline_mean=0.10, alternative="less")
    assert minimum_detectable_effect(binomial, 20000, 0.8) == pytest.approx(-0.1030171, abs=1e-6)
