"""Holm and Benjamini-Hochberg adjustment across metrics and variants (statsmodels ``multipletests``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from statsmodels.stats.multitest import multipletests

from analytics.stats.models.settings import Correction

_METHODS: dict[str, str] = {"holm": "holm", "bh": "fdr_bh"}


def adjust_p_values(p_values: Sequence[float], correction: Correction, alpha: float) -> list[float]:
    """Adjusted p-values in input order; compare them with ``alpha`` to decide significance.

    Holm controls the family-wise error rate, Benjamini-Hochberg the false discovery rate; ``none``
    returns the p-values unchanged. A NaN p-value (a comparison without a result) stays NaN and is left
    out of the family, as R's ``p.adjust`` does with NA.
    """
    if correction != "none" and correction not in _METHODS:
        raise ValueError(f"unknown correction {correction!r}; allowed: holm, bh, none")
    out = [float(p) for p in p_values]
    tested = [i for i, p in enumerate(out) if not math.isnan(p)]
    if correction == "none" or not tested:
        return out
    _, adjusted, _, _ = multipletests([out[i] for i in tested], alpha=alpha, method=_METHODS[correction])
    for i, p in zip(tested, adjusted, strict=True):
        out[i] = float(p)
    return out
