"""Holm and Benjamini-Hochberg adjustment across metrics and variants (statsmodels ``multipletests``)."""

from __future__ import annotations

from collections.abc import Sequence

from statsmodels.stats.multitest import multipletests

from analytics.stats.models.settings import Correction

_METHODS: dict[str, str] = {"holm": "holm", "bh": "fdr_bh"}


def adjust_p_values(p_values: Sequence[float], correction: Correction, alpha: float) -> list[float]:
    """Adjusted p-values in input order; compare them with ``alpha`` to decide significance.

    Holm controls the family-wise error rate, Benjamini-Hochberg the false discovery rate; ``none``
    returns the p-values unchanged.
    """
    if correction == "none" or len(p_values) == 0:
        return [float(p) for p in p_values]
    if correction not in _METHODS:
        raise ValueError(f"unknown correction {correction!r}; allowed: holm, bh, none")
    _, adjusted, _, _ = multipletests(list(p_values), alpha=alpha, method=_METHODS[correction])
    return [float(p) for p in adjusted]
