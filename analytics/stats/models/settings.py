"""Settings of a test: plain dataclasses with Literal aliases for the enumerations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DifferenceType = Literal["relative", "absolute"]
StatsEngine = Literal["frequentist", "bayesian"]
Correction = Literal["holm", "bh", "none"]
Alternative = Literal["two-sided", "greater", "less"]

DEFAULT_SEQUENTIAL_TUNING_PARAMETER = 5000.0
"""Total sample size at which the sequential interval is tightest (the mixture's tuning parameter)."""


@dataclass(frozen=True)
class FrequentistConfig:
    """Fixed-horizon Welch test, or an always-valid confidence sequence when ``sequential`` is on."""

    alpha: float = 0.05
    difference_type: DifferenceType = "relative"
    sequential: bool = False
    sequential_tuning_parameter: float = DEFAULT_SEQUENTIAL_TUNING_PARAMETER

    def __post_init__(self) -> None:
        check_frequentist(self.alpha, self.sequential_tuning_parameter)


def check_frequentist(alpha: float, sequential_tuning_parameter: float) -> None:
    """The checks every frequentist config shares.

    Raises:
        ValueError: alpha outside (0, 1) or a tuning parameter that is not positive.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if sequential_tuning_parameter <= 0:
        raise ValueError(f"sequential_tuning_parameter must be > 0, got {sequential_tuning_parameter}")


@dataclass(frozen=True)
class BayesianConfig:
    """Gaussian model of the effect; the default prior is flat (improper), so only the data speak."""

    difference_type: DifferenceType = "relative"
    interval_level: float = 0.95
    prior_mean: float = 0.0
    prior_variance: float | None = None
    inverse: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.interval_level < 1.0:
            raise ValueError(f"interval_level must be in (0, 1), got {self.interval_level}")
        if self.prior_variance is not None and self.prior_variance <= 0:
            raise ValueError(f"prior_variance must be > 0 or None, got {self.prior_variance}")
