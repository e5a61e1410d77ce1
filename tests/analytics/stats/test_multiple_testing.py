"""Holm and Benjamini-Hochberg against hand-computed numbers and statsmodels' ``multipletests``."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from analytics.stats.models.settings import Correction
from analytics.stats.multiple_testing import adjust_p_values, benjamini_hochberg, holm, interval_levels

P = [0.01, 0.04, 0.03, 0.20]


def test_holm_hand_computed() -> None:
    # sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> monotone 0.09, 0.20
    assert adjust_p_values(P, "holm") == pytest.approx([0.04, 0.09, 0.09, 0.20])


def test_benjamini_hochberg_hand_computed() -> None:
    # p * m / rank: 0.04, 0.0533, 0.06, 0.20 -> step-up minimum from the top: 0.04, 0.0533, 0.0533, 0.20
    assert adjust_p_values(P, "bh") == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.20])


def test_none_and_empty() -> None:
    assert adjust_p_values(P, "none") == P
    assert adjust_p_values([], "holm") == []
    with pytest.raises(ValueError, match="unknown correction"):
        adjust_p_values(P, "bonferroni")  # type: ignore[arg-type]


@pytest.mark.parametrize("correction", ["holm", "bh"])
def test_nan_p_value_is_left_out_of_the_family(correction: Correction) -> None:
    """A NaN p-value (no result) must not count as a hypothesis nor poison the others.

    Reference: R ``p.adjust(c(0.01, NA, 0.04), "holm")`` and ``"BH"`` both give 0.02, NA, 0.04, which equals
    statsmodels ``multipletests([0.01, 0.04])`` on the two real p-values (m = 2). The old code passed the NaN
    to statsmodels and got [0.03, nan, 0.08] (Holm, m = 3) and [nan, nan, nan] (BH).
    """
    adjusted = adjust_p_values([0.01, float("nan"), 0.04], correction)
    assert math.isnan(adjusted[1])
    assert [adjusted[0], adjusted[2]] == pytest.approx([0.02, 0.04])
    assert all(math.isnan(p) for p in adjust_p_values([float("nan")], correction))


# Hand-computed from the textbook definitions, the numbers R's p.adjust gives. Holm: the k-th smallest of m
# p-values times m - k + 1, made non-decreasing from the smallest up; BH: the k-th smallest times m / k, made
# non-increasing from the largest down; both capped at 1.
@pytest.mark.parametrize(
    ("p_values", "holm", "bh"),
    [
        # ties: Holm 0.01 * 4, 0.01 * 3 -> 0.04 (monotone), 0.04 * 2, 0.5; BH 0.04, 0.02 -> 0.02, 0.0533, 0.5
        ([0.01, 0.01, 0.04, 0.5], [0.04, 0.04, 0.08, 0.5], [0.02, 0.02, 0.16 / 3, 0.5]),
        # a p-value of 1 stays 1; the other is doubled by both
        ([1.0, 0.02], [1.0, 0.04], [1.0, 0.04]),
        # capped at 1: Holm 1.2, 1.4 -> 1; BH 1.2, 1.05, 0.9 -> 0.9 from the largest down
        ([0.4, 0.7, 0.9], [1.0, 1.0, 1.0], [0.9, 0.9, 0.9]),
        # a single test is its own family: nothing to adjust
        ([0.03], [0.03], [0.03]),
        # p = 0.03 the smallest of five: significant alone, 0.15 after either correction
        ([0.03, 0.2, 0.4, 0.6, 0.8], [0.15, 0.8, 1.0, 1.0, 1.0], [0.15, 0.5, 0.6 / 0.9, 0.75, 0.8]),
    ],
)
def test_textbook_adjustments(p_values: list[float], holm: list[float], bh: list[float]) -> None:
    assert adjust_p_values(p_values, "holm") == pytest.approx(holm, rel=1e-12)
    assert adjust_p_values(p_values, "bh") == pytest.approx(bh, rel=1e-12)


def test_interval_levels_hand_computed() -> None:
    """alpha * p / p_adj: Holm's smallest p gets alpha / 4 (Bonferroni), its largest alpha; BH's 0.04 (rank 3,
    decided at its own step 0.04 * 4 / 3) gets alpha * 3 / 4."""
    holm = [0.05 / 4, 0.05 * 0.04 / 0.09, 0.05 * 0.03 / 0.09, 0.05]
    assert interval_levels(P, "holm", 0.05) == pytest.approx(holm, rel=1e-12)
    assert interval_levels(P, "bh", 0.05) == pytest.approx([0.05 / 4, 0.0375, 0.028125, 0.05], rel=1e-12)
    assert interval_levels(P, "none", 0.05) == [0.05] * 4
    assert interval_levels([], "holm", 0.05) == []


@pytest.mark.parametrize("correction", ["holm", "bh", "none"])
def test_interval_levels_agree_with_the_adjusted_p_values(correction: Correction) -> None:
    """p < its level exactly when the adjusted p is below alpha (an interval at that level excludes 0 exactly
    then); a level is never above alpha; a p-value of 0 gets alpha / m (m = 3 tested); NaN stays out."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        p_values = [*rng.uniform(0, 0.1, 6), *rng.uniform(0, 1, 4), 0.05, 1.0]
        adjusted = adjust_p_values(p_values, correction)
        levels = interval_levels(p_values, correction, 0.05)
        assert [p < level for p, level in zip(p_values, levels, strict=True)] == [q < 0.05 for q in adjusted]
        assert all(level <= 0.05 for level in levels)
    levels = interval_levels([0.0, float("nan"), 0.5, 0.01], correction, 0.05)
    assert levels[0] == (0.05 if correction == "none" else 0.05 / 3) and math.isnan(levels[1])


def test_statsmodels_gives_the_same_numbers() -> None:
    """statsmodels ``multipletests`` (methods "holm" and "fdr_bh") as the reference, on families of 1 to 40
    p-values with ties (rounded to 2 decimals), zeros and ones (few: each statsmodels Holm call collects)."""
    rng = np.random.default_rng(3)
    for size in [1, 2, 3, 5, 8, 13, 40] * 3:
        p_values = [float(p) for p in np.round(rng.uniform(0, 1, size) ** 3, 2)]
        for method, ours in (("holm", holm), ("fdr_bh", benjamini_hochberg)):
            expected = multipletests(p_values, alpha=0.05, method=method)[1]
            assert ours(p_values) == pytest.approx(list(expected), rel=1e-12, abs=1e-15), (method, p_values)


def test_no_garbage_collection_per_call() -> None:
    """statsmodels' Holm runs gc.collect() on every call (110-200 ms per report in the server's process)."""
    before = gc.get_stats()[2]["collections"]  # full collections
    for _ in range(100):
        adjust_p_values(P, "holm")
        adjust_p_values(P, "bh")
    assert gc.get_stats()[2]["collections"] - before < 10
