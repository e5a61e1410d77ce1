"""The compare contract: two arms of sufficient statistics in, one lift with interval and p-values out.

Input (``python -m analytics compare --input FILE.json``)::

    {"metric_type": "mean"|"binomial"|"ratio", "difference_type": "relative"|"absolute", "alpha": 0.05,
     "sequential": false, "sequential_tuning_parameter": 5000, "control": {...}, "treatment": {...}}

Arms: ``{n, sum, sum_squares}`` (mean), ``{n, sum}`` (binomial), ``{n, num_sum, num_sum_squares, den_sum,
den_sum_squares, num_den_sum_product}`` (ratio); mean and binomial arms may add ``{pre_sum,
pre_sum_squares, post_pre_sum_product}`` for CUPED (both arms or neither).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from analytics.stats.bayesian.tests import EffectBayesianTest
from analytics.stats.frequentist.tests import frequentist_test
from analytics.stats.models.settings import (
    DEFAULT_SEQUENTIAL_TUNING_PARAMETER,
    BayesianConfig,
    DifferenceType,
    FrequentistConfig,
)
from analytics.stats.models.statistics import CupedMean, Proportion, Ratio, SampleMean, TestStatistic

_CUPED_KEYS = ("pre_sum", "pre_sum_squares", "post_pre_sum_product")
_REQUIRED = {
    "mean": ("n", "sum", "sum_squares"),
    "binomial": ("n", "sum"),
    "ratio": ("n", "num_sum", "num_sum_squares", "den_sum", "den_sum_squares", "num_den_sum_product"),
}


class Arm(BaseModel):
    """Sufficient statistics of one arm; which keys are required depends on the metric type."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n: int = Field(ge=0)
    sum: float | None = None
    sum_squares: float | None = None
    num_sum: float | None = None
    num_sum_squares: float | None = None
    den_sum: float | None = None
    den_sum_squares: float | None = None
    num_den_sum_product: float | None = None
    pre_sum: float | None = None
    pre_sum_squares: float | None = None
    post_pre_sum_product: float | None = None

    def value(self, key: str) -> float:
        """A required statistic (presence is checked by ``CompareInput``)."""
        value = getattr(self, key)
        if value is None:
            raise ValueError(f"missing {key}")
        return float(value)

    def has_cuped(self) -> bool:
        return any(getattr(self, key) is not None for key in _CUPED_KEYS)


class CompareInput(BaseModel):
    """Validated compare request."""

    model_config = ConfigDict(extra="forbid")

    metric_type: Literal["mean", "binomial", "ratio"]
    difference_type: DifferenceType = "relative"
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    sequential: bool = False
    sequential_tuning_parameter: float = Field(default=DEFAULT_SEQUENTIAL_TUNING_PARAMETER, gt=0.0)
    control: Arm
    treatment: Arm

    @model_validator(mode="after")
    def _check_arm_keys(self) -> CompareInput:
        for side in ("control", "treatment"):
            arm: Arm = getattr(self, side)
            missing = [key for key in _REQUIRED[self.metric_type] if getattr(arm, key) is None]
            if missing:
                raise ValueError(f"{side}: {self.metric_type} arms need {missing}")
            allowed = set(_REQUIRED[self.metric_type])
            if self.metric_type != "ratio":
                allowed |= set(_CUPED_KEYS)
            extra = [k for k, v in arm.model_dump().items() if v is not None and k not in allowed]
            if extra:
                raise ValueError(
                    f"{side}: keys {extra} do not apply to {self.metric_type}; allowed {sorted(allowed)}"
                )
            if self.metric_type == "binomial" and not 0 <= arm.value("sum") <= arm.n:
                raise ValueError(f"{side}: binomial sum counts successes: it must be in [0, n={arm.n}]")
            if arm.has_cuped() and any(getattr(arm, key) is None for key in _CUPED_KEYS):
                raise ValueError(f"{side}: CUPED needs all of {list(_CUPED_KEYS)}")
        if self.control.has_cuped() != self.treatment.has_cuped():
            raise ValueError("CUPED statistics must be given for both arms or neither")
        return self


def arm_statistic(metric_type: str, arm: Arm) -> TestStatistic:
    """Build the statistic dataclass of one arm."""
    v = arm.value
    if metric_type == "ratio":
        return Ratio(
            n=arm.n,
            numerator=SampleMean(arm.n, v("num_sum"), v("num_sum_squares")),
            denominator=SampleMean(arm.n, v("den_sum"), v("den_sum_squares")),
            num_den_sum_product=v("num_den_sum_product"),
        )
    post_squares = v("sum") if metric_type == "binomial" else v("sum_squares")
    if arm.has_cuped():
        return CupedMean(
            n=arm.n,
            post=SampleMean(arm.n, v("sum"), post_squares),
            pre=SampleMean(arm.n, v("pre_sum"), v("pre_sum_squares")),
            post_pre_sum_product=v("post_pre_sum_product"),
        )
    if metric_type == "binomial":
        return Proportion(arm.n, v("sum"))
    return SampleMean(arm.n, v("sum"), post_squares)


def compare(request: CompareInput) -> dict[str, Any]:
    """Run the frequentist test (and a flat-prior chance-to-win) and return the JSON-ready result."""
    stat_a = arm_statistic(request.metric_type, request.control)
    stat_b = arm_statistic(request.metric_type, request.treatment)
    test = frequentist_test(
        stat_a,
        stat_b,
        FrequentistConfig(
            alpha=request.alpha,
            difference_type=request.difference_type,
            sequential=request.sequential,
            sequential_tuning_parameter=request.sequential_tuning_parameter,
        ),
    )
    result = asdict(test.compute_result())
    if result["ci"] is not None:
        result["ci"] = list(result["ci"])
    bayes = EffectBayesianTest(stat_a, stat_b, BayesianConfig(difference_type=request.difference_type))
    result["chance_to_win"] = bayes.compute_result().chance_to_win
    result["metric_type"] = request.metric_type
    result["alpha"] = request.alpha
    result["cuped"] = isinstance(test.stat_a, CupedMean)
    if isinstance(test.stat_a, CupedMean):
        result["theta"] = test.stat_a.theta
    return result
