"""Experiment-level analysis: every treatment against control for one metric, then correction across all.

This is the small orchestrator between the per-variant statistics and the report: it runs the absolute
and relative tests (fixed-horizon or sequential), a flat-prior chance-to-win, and the multiple-testing
adjustment over the (metric, variant) comparisons the report puts in one family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from analytics.stats.bayesian.tests import EffectBayesianTest
from analytics.stats.frequentist.tests import frequentist_test
from analytics.stats.models.results import BayesianResult, FrequentistResult
from analytics.stats.models.settings import (
    DEFAULT_SEQUENTIAL_TUNING_PARAMETER,
    BayesianConfig,
    Correction,
    DifferenceType,
    FrequentistConfig,
)
from analytics.stats.models.statistics import CupedMean, TestStatistic, pooled_theta
from analytics.stats.multiple_testing import adjust_p_values, interval_levels


@dataclass(frozen=True)
class AnalysisSettings:
    """How every comparison of an experiment is tested and corrected."""

    alpha: float = 0.05
    difference_type: DifferenceType = "relative"
    correction: Correction = "holm"
    sequential: bool = False
    sequential_tuning_parameter: float = DEFAULT_SEQUENTIAL_TUNING_PARAMETER

    def frequentist(self, difference_type: DifferenceType) -> FrequentistConfig:
        return FrequentistConfig(
            alpha=self.alpha,
            difference_type=difference_type,
            sequential=self.sequential,
            sequential_tuning_parameter=self.sequential_tuning_parameter,
        )


@dataclass(frozen=True)
class Comparison:
    """One treatment against control on one metric."""

    absolute: FrequentistResult
    relative: FrequentistResult
    bayesian: BayesianResult
    control: TestStatistic
    treatment: TestStatistic

    def primary(self, difference_type: DifferenceType) -> FrequentistResult:
        """The result whose p-value decides significance."""
        return self.relative if difference_type == "relative" else self.absolute

    def primary_interval(self, settings: AnalysisSettings, alpha: float) -> tuple[float, float] | None:
        """The primary result's interval at level ``alpha`` (same test and data, another level)."""
        config = settings.frequentist(settings.difference_type)
        return frequentist_test(self.control, self.treatment, config).interval(alpha)


def compare_to_control(
    stats: dict[str, TestStatistic], control: str, settings: AnalysisSettings, inverse: bool = False
) -> dict[str, Comparison]:
    """Comparisons of every non-control variant in ``stats`` against ``control``.

    CUPED statistics share one theta pooled over all variants, so the control's adjusted mean is the same
    in every comparison.
    """
    stats = pool_cuped(stats)
    stat_a = stats[control]
    comparisons = {}
    for variant, stat_b in stats.items():
        if variant == control:
            continue
        comparisons[variant] = Comparison(
            absolute=frequentist_test(stat_a, stat_b, settings.frequentist("absolute")).compute_result(),
            relative=frequentist_test(stat_a, stat_b, settings.frequentist("relative")).compute_result(),
            bayesian=EffectBayesianTest(
                stat_a, stat_b, BayesianConfig(difference_type=settings.difference_type, inverse=inverse)
            ).compute_result(),
            control=stat_a,
            treatment=stat_b,
        )
    return comparisons


def pool_cuped(stats: dict[str, TestStatistic]) -> dict[str, TestStatistic]:
    """CUPED statistics with theta and pre mean pooled over all variants; other kinds unchanged."""
    cuped = [s for s in stats.values() if isinstance(s, CupedMean)]
    if not cuped or len(cuped) != len(stats):
        return stats
    theta, pre_mean = pooled_theta(cuped)
    return {key: stat.with_pooled(theta, pre_mean) for key, stat in zip(stats, cuped, strict=True)}


@dataclass(frozen=True)
class Corrected:
    """A comparison after the multiple-testing correction: its adjusted p-value, and the level at which its
    interval agrees with it (excludes 0 exactly when ``p_value < alpha``; see ``interval_levels``)."""

    p_value: float
    interval_alpha: float


def correct(results: Sequence[FrequentistResult], settings: AnalysisSettings) -> list[Corrected | None]:
    """The correction over one family: all results that have a p-value; None where the test returned an error
    (it is left out of the family)."""
    tested = {
        i: r.p_value for i, r in enumerate(results) if r.p_value is not None and not math.isnan(r.p_value)
    }
    p_values = list(tested.values())
    adjusted = adjust_p_values(p_values, settings.correction)
    levels = interval_levels(p_values, settings.correction, settings.alpha)
    out: list[Corrected | None] = [None] * len(results)
    for i, p, level in zip(tested, adjusted, levels, strict=True):
        out[i] = Corrected(p, level)
    return out
