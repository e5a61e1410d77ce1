"""Holm and Benjamini-Hochberg adjustment across metrics and variants, and the interval levels that agree.

Written out rather than taken from statsmodels' ``multipletests``: its Holm branch runs a full ``gc.collect()``
on every call, which cost each Holm report 110-200 ms in the analytics server's process (BH: none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from analytics.stats.models.settings import Correction


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error rate): the k-th smallest of m p-values times m - k + 1,
    made non-decreasing from the smallest up and capped at 1; in input order."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(sorted(range(m), key=p_values.__getitem__)):
        running = max(running, (m - k) * p_values[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg's step-up adjustment (false discovery rate): the p-value of rank r times m / r,
    made non-increasing from the largest down and capped at 1; in input order."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 1.0
    for k, i in enumerate(sorted(range(m), key=p_values.__getitem__, reverse=True)):
        running = min(running, p_values[i] * m / (m - k))
        adjusted[i] = running
    return adjusted


def adjust_p_values(p_values: Sequence[float], correction: Correction) -> list[float]:
    """Adjusted p-values in input order; compare them with alpha to decide significance.

    Holm controls the family-wise error rate, Benjamini-Hochberg the false discovery rate; ``none``
    returns the p-values unchanged. A NaN p-value (a comparison without a result) stays NaN and is left
    out of the family, as R's ``p.adjust`` does with NA.
    """
    methods = {"holm": holm, "bh": benjamini_hochberg}
    if correction != "none" and correction not in methods:
        raise ValueError(f"unknown correction {correction!r}; allowed: holm, bh, none")
    out = [float(p) for p in p_values]
    tested = [i for i, p in enumerate(out) if not math.isnan(p)]
    if correction == "none" or not tested:
        return out
    for i, p in zip(tested, methods[correction]([out[i] for i in tested]), strict=True):
        out[i] = p
    return out


def interval_levels(p_values: Sequence[float], correction: Correction, alpha: float) -> list[float]:
    """Per comparison, the alpha of the interval that agrees with its adjusted p-value: ``alpha * p / p_adj``.

    A test's interval at level a excludes 0 exactly when p < a, so at ``alpha * p / p_adj`` it excludes 0
    exactly when ``p_adj < alpha``. The smallest p of a Holm family gets alpha / m (the Bonferroni interval);
    a Benjamini-Hochberg p that its own step decides gets alpha * rank / m (the level of Benjamini and
    Yekutieli's false-coverage-rate intervals). Like GrowthBook's adjusted intervals this only keeps interval
    and verdict in agreement: Holm and BH have no simultaneous confidence set to match. An unadjusted p-value
    (``none``, or the largest of a Holm family) gives alpha; a p-value of 0 (below the smallest float: the
    ratio is lost) gets alpha / m; NaN stays NaN.
    """
    adjusted = adjust_p_values(p_values, correction)
    family = sum(not math.isnan(p) for p in adjusted)
    levels = []
    for p, p_adj in zip(p_values, adjusted, strict=True):
        if math.isnan(p_adj):
            levels.append(math.nan)
        elif p == 0.0 and correction != "none":
            levels.append(alpha / family)
        elif p_adj == p:  # exactly alpha: (alpha * p) / p may be off by one unit in the last place
            levels.append(alpha)
        else:
            levels.append(alpha * float(p) / p_adj)
    return levels
