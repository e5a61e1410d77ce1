"""Results of a test. Expected data problems come back as ``error`` codes (see ``messages``)."""

from __future__ import annotations

from dataclasses import dataclass

from analytics.stats.models.settings import DifferenceType


@dataclass(frozen=True)
class Difference:
    """A treatment-vs-control difference and its sampling distribution (before any test is applied)."""

    estimate: float
    variance: float
    df: float

    @property
    def se(self) -> float:
        return self.variance**0.5


@dataclass(frozen=True)
class FrequentistResult:
    """Estimate, interval and p-values of one treatment against control.

    ``p_value_greater`` tests treatment > control, ``p_value_less`` treatment < control. In sequential mode
    ``p_value`` is the always-valid p-value and the one-sided values are its conservative restriction.
    """

    difference_type: DifferenceType
    control_mean: float
    treatment_mean: float
    estimate: float | None = None
    ci: tuple[float, float] | None = None
    se: float | None = None
    df: float | None = None
    p_value: float | None = None
    p_value_greater: float | None = None
    p_value_less: float | None = None
    sequential: bool = False
    error: str | None = None


@dataclass(frozen=True)
class BayesianResult:
    """Posterior of the effect: chance that treatment beats control, credible interval and expected losses."""

    difference_type: DifferenceType
    control_mean: float
    treatment_mean: float
    estimate: float | None = None
    ci: tuple[float, float] | None = None
    se: float | None = None
    chance_to_win: float | None = None
    risk_control: float | None = None
    risk_treatment: float | None = None
    error: str | None = None
