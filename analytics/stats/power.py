"""Power, minimum detectable effect and sample size for a fixed-horizon two-arm test.

Normal approximation through statsmodels ``NormalIndPower``: with arm variances v_a, v_b the difference has
standard error sqrt(v_a/n_a + v_b/n_b), passed to statsmodels as a standardised effect over the equivalent
common standard deviation. For binomial metrics the treatment variance follows from the treatment rate.
A relative lift is tested with the delta-method standard error, which grows with the ratio it estimates;
its power comes from that test's rejection region (``relative_power``), not from the absolute test's.
Sequential mode trades some power for safe peeking; these figures are for the fixed-horizon test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scipy import special
from scipy.optimize import brentq
from statsmodels.stats.power import NormalIndPower

from analytics.stats.models.settings import Alternative, DifferenceType

PowerMetricType = Literal["mean", "binomial"]
_STATSMODELS_ALTERNATIVE = {"two-sided": "two-sided", "greater": "larger", "less": "smaller"}
_RATE_ROUNDING = 1e-12
"""A relative lift of 900% on 0.1 gives a rate of 1.0000000000000002: still the rate 1."""


@dataclass(frozen=True)
class PowerInputs:
    """Baseline of the metric and the design of the test.

    ``baseline_variance`` is the per-user variance for mean metrics; binomial metrics derive p(1 - p).
    ``weights`` are the control and treatment traffic shares (normalised).
    """

    metric_type: PowerMetricType
    baseline_mean: float
    baseline_variance: float | None = None
    weights: tuple[float, float] = (0.5, 0.5)
    alpha: float = 0.05
    alternative: Alternative = "two-sided"
    difference_type: DifferenceType = "relative"

    def __post_init__(self) -> None:
        if self.metric_type == "mean" and (self.baseline_variance is None or self.baseline_variance <= 0):
            raise ValueError("mean metrics need baseline_variance > 0")
        if self.metric_type == "binomial" and not 0.0 < self.baseline_mean < 1.0:
            raise ValueError(f"binomial baseline_mean must be in (0, 1), got {self.baseline_mean}")
        if self.difference_type == "relative" and self.baseline_mean <= 0:
            # the tests report no relative lift on such a control mean (BASELINE_ZERO, BASELINE_NEGATIVE)
            raise ValueError(f"relative effects need a baseline_mean > 0, got {self.baseline_mean:g}")
        if len(self.weights) != 2 or min(self.weights) <= 0:
            raise ValueError(f"weights must be two positive shares, got {self.weights}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    def absolute_effect(self, effect: float) -> float:
        return effect * self.baseline_mean if self.difference_type == "relative" else effect

    def check_effect(self, effect: float) -> None:
        """Refuse a lift that takes a binomial rate out of [0, 1]: its power would be that of another lift.

        Raises:
            ValueError: the treatment rate baseline + lift is below 0 or above 1.
        """
        rate = self.baseline_mean + self.absolute_effect(effect)
        if self.metric_type == "binomial" and not -_RATE_ROUNDING <= rate <= 1.0 + _RATE_ROUNDING:
            raise ValueError(f"effect {effect:g} puts the treatment rate at {rate:g}, outside [0, 1]")

    def min_users(self) -> float:
        """Fewest total users that put 2 in each arm: with fewer a test returns NO_UNITS."""
        share_a = self.weights[0] / sum(self.weights)
        return 2.0 / min(share_a, 1.0 - share_a)

    def arm_variances(self, absolute_effect: float) -> tuple[float, float]:
        if self.metric_type == "binomial":
            p_a = self.baseline_mean
            p_b = min(max(p_a + absolute_effect, 0.0), 1.0)  # within _RATE_ROUNDING of [0, 1] (check_effect)
            return p_a * (1.0 - p_a), p_b * (1.0 - p_b)
        assert self.baseline_variance is not None
        return self.baseline_variance, self.baseline_variance

    def max_effect(self) -> float:
        """Largest effect size worth searching over, in the tested direction (a binomial rate stays in [0, 1])."""
        if self.metric_type == "binomial":
            room = self.baseline_mean if self.alternative == "less" else 1.0 - self.baseline_mean
            return room / self.baseline_mean if self.difference_type == "relative" else room
        assert self.baseline_variance is not None
        scale = math.sqrt(self.baseline_variance) * 100.0
        return scale / abs(self.baseline_mean) if self.difference_type == "relative" else scale


def power(inputs: PowerInputs, n_total: float, effect: float) -> float:
    """Probability of a significant result with ``n_total`` users when the true lift is ``effect``.

    Raises:
        ValueError: a binomial lift that takes the treatment rate out of [0, 1].
    """
    inputs.check_effect(effect)
    share_a = inputs.weights[0] / sum(inputs.weights)
    n_a, n_b = n_total * share_a, n_total * (1.0 - share_a)
    delta = inputs.absolute_effect(effect)
    var_a, var_b = inputs.arm_variances(delta)
    if inputs.difference_type == "relative":
        return relative_power(inputs, delta, var_a / n_a, var_b / n_b)
    common_sd = math.sqrt((var_a / n_a + var_b / n_b) / (1.0 / n_a + 1.0 / n_b))
    if common_sd == 0:
        return 1.0 if delta != 0 else inputs.alpha
    return float(
        NormalIndPower().power(
            effect_size=delta / common_sd,
            nobs1=n_a,
            alpha=inputs.alpha,
            ratio=n_b / n_a,
            alternative=_STATSMODELS_ALTERNATIVE[inputs.alternative],
        )
    )


def relative_power(inputs: PowerInputs, delta: float, component_a: float, component_b: float) -> float:
    """Power of the relative test (mean_b / mean_a - 1 over its delta-method standard error).

    With D = mean_b - mean_a, that test's t-statistic is D / sqrt(component_b + component_a R^2), where
    R = 1 + D / mean_a and component_x = var_x / n_x: its standard error grows with the estimated ratio, so
    a rise needs a larger D than the absolute test's z s (s^2 = component_a + component_b) and a drop a
    smaller one. With k = z^2 component_a / mean_a^2 and g = k mean_a + sqrt((k mean_a)^2 + (1 - k) z^2 s^2)
    the test rejects for D above g / (1 - k) (never when k >= 1: its t-statistic then stays below z however
    large the rise) and for D below -z^2 s^2 / g (when k > 1, only down to g / (1 - k)); D ~ N(delta, s^2).
    The absolute test's power stood for it before: +50% on a mean of 10 with sd 10 and 63 users per arm
    was given power 0.80, and the relative test detects it in 0.63 of simulated experiments (this: 0.65).
    """
    mean_a = inputs.baseline_mean
    sd = math.sqrt(component_a + component_b)
    z = float(special.ndtri(1.0 - inputs.alpha / (2.0 if inputs.alternative == "two-sided" else 1.0)))
    k = z * z * component_a / mean_a**2
    discriminant = (k * mean_a) ** 2 + (1.0 - k) * (z * sd) ** 2
    if discriminant < 0:  # k > 1 and no difference D reaches z
        return 0.0
    g = k * mean_a + math.sqrt(discriminant)

    def below(x: float) -> float:
        return float(special.ndtr((x - delta) / sd))

    rise = float(special.ndtr((delta - g / (1.0 - k)) / sd)) if k < 1.0 else 0.0
    drop = below(-((z * sd) ** 2) / g) - (below(g / (1.0 - k)) if k > 1.0 else 0.0)
    if inputs.alternative == "greater":
        return rise
    if inputs.alternative == "less":
        return drop
    return rise + drop


def minimum_detectable_effect(inputs: PowerInputs, n_total: float, target_power: float = 0.8) -> float:
    """Smallest lift (in ``inputs.difference_type`` units) detected with ``target_power``.

    The lift points in the tested direction: positive, or negative for the alternative ``less``.

    Raises:
        ValueError: no effect within the metric's range reaches the target power, or the target is not
            above alpha (which no effect at all already reaches).
    """
    _check_target_power(inputs, target_power)
    sign = -1.0 if inputs.alternative == "less" else 1.0
    upper = inputs.max_effect()
    if power(inputs, n_total, sign * upper * (1 - 1e-9)) < target_power:
        raise ValueError(
            f"no effect up to {sign * upper:.4g} reaches power {target_power} with {n_total:.0f} users"
        )
    size = brentq(lambda e: power(inputs, n_total, sign * e) - target_power, upper * 1e-9, upper * (1 - 1e-9))
    return sign * float(size)


def required_sample_size(inputs: PowerInputs, effect: float, target_power: float = 0.8) -> int:
    """Total users (both arms) needed to detect ``effect`` with ``target_power``; at least 2 per arm.

    Raises:
        ValueError: a zero effect, one against a one-sided alternative (its power falls with more users),
            a binomial rate out of [0, 1], a target not above alpha, or more than 1e13 users needed.
    """
    _check_target_power(inputs, target_power)
    if effect == 0:
        raise ValueError("effect must be non-zero")
    if (inputs.alternative == "greater" and effect < 0) or (inputs.alternative == "less" and effect > 0):
        raise ValueError(f"effect {effect:g} points against the alternative {inputs.alternative!r}")
    low = inputs.min_users()
    if power(inputs, low, effect) >= target_power:  # so large an effect that the fewest testable users do
        return int(math.ceil(low))
    high = 2.0 * low
    while power(inputs, high, effect) < target_power:
        high *= 2.0
        if high > 1e13:
            raise ValueError(f"effect {effect} is not detectable with any realistic sample size")
    n = brentq(lambda m: power(inputs, m, effect) - target_power, low, high)
    return int(math.ceil(n))


def _check_target_power(inputs: PowerInputs, target_power: float) -> None:
    """A target at or below alpha is met with no effect at all: there is nothing to solve for."""
    if not inputs.alpha < target_power < 1.0:
        raise ValueError(f"target power must be in (alpha={inputs.alpha:g}, 1), got {target_power:g}")
