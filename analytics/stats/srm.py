"""Sample-ratio mismatch: a chi-square goodness-of-fit test of users per variant against the weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as scipy_stats

SRM_THRESHOLD = 0.001
"""p-values below this flag a mismatch: a broken assignment or logging path, not bad luck."""


def srm_p_value(counts: Sequence[int], weights: Sequence[float]) -> float:
    """p-value of observing ``counts`` if users were split by ``weights`` (normalised to sum to 1).

    Raises:
        ValueError: lengths differ, fewer than two variants, a weight is not positive, or no users.
    """
    if len(counts) != len(weights):
        raise ValueError(f"{len(counts)} counts but {len(weights)} weights")
    if len(counts) < 2:
        raise ValueError("SRM needs at least two variants")
    if any(not 0 < w < math.inf for w in weights):
        raise ValueError(f"weights must be finite and > 0, got {list(weights)}")
    if any(c < 0 for c in counts):
        raise ValueError(f"counts must be >= 0, got {list(counts)}")
    total = sum(counts)
    if total == 0:
        raise ValueError("SRM needs at least one user")
    weight_total = sum(weights)
    expected = [total * w / weight_total for w in weights]
    return float(scipy_stats.chisquare(list(counts), f_exp=expected).pvalue)


def srm_flagged(p_value: float | None, threshold: float = SRM_THRESHOLD) -> bool:
    """True when the split is implausible at ``threshold``."""
    return p_value is not None and p_value < threshold
