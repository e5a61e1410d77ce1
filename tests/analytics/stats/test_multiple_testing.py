"""Holm and Benjamini-Hochberg through statsmodels, with hand-computed references."""

from __future__ import annotations

import pytest

from analytics.stats.multiple_testing import adjust_p_values

P = [0.01, 0.04, 0.03, 0.20]


def test_holm_hand_computed() -> None:
    # sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> monotone 0.09, 0.20
    assert adjust_p_values(P, "holm", 0.05) == pytest.approx([0.04, 0.09, 0.09, 0.20])


def test_benjamini_hochberg_hand_computed() -> None:
    # p * m / rank: 0.04, 0.0533, 0.06, 0.20 -> step-up minimum from the top: 0.04, 0.0533, 0.0533, 0.20
    assert adjust_p_values(P, "bh", 0.05) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.20])


def test_none_and_empty() -> None:
    assert adjust_p_values(P, "none", 0.05) == P
    assert adjust_p_values([], "holm", 0.05) == []
    with pytest.raises(ValueError, match="unknown correction"):
        adjust_p_values(P, "bonferroni", 0.05)  # type: ignore[arg-type]
