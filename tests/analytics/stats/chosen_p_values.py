"""Sufficient statistics built to give chosen p-values, for tests of what a correction does with them."""

from __future__ import annotations

from scipy import special

from analytics.stats.models.statistics import SampleMean


def arms_with_p_values(p_values: dict[str, float], n: int = 1000) -> dict[str, SampleMean]:
    """A "control" of mean 0 and one treatment per key whose fixed-horizon absolute lift has that two-sided
    p-value: every arm has ``n`` users and variance 1, so the Welch test has se sqrt(2 / n) and 2n - 2 degrees
    of freedom, and a treatment's mean is the t quantile of 1 - p / 2 times that se."""
    arms = {"control": SampleMean(n, 0.0, n - 1.0)}
    for key, p in p_values.items():
        shift = float(special.stdtrit(2 * n - 2, 1 - p / 2)) * (2 / n) ** 0.5
        arms[key] = SampleMean(n, shift * n, n - 1.0 + n * shift**2)
    return arms
