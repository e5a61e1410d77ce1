"""Holm and Benjamini-Hochberg through statsmodels, with hand-computed references."""

from __future__ import annotations

import math

import pytest

from analytics.stats.models.settings import Correction
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


@pytest.mark.parametrize("correction", ["holm", "bh"])
def test_nan_p_value_is_left_out_of_the_family(correction: Correction) -> None:
    """A NaN p-value (no result) must not count as a hypothesis nor poison the others.

    Reference: R ``p.adjust(c(0.01, NA, 0.04), "holm")`` and ``"BH"`` both give 0.02, NA, 0.04, which equals
    statsmodels ``multipletests([0.01, 0.04])`` on the two real p-values (m = 2). The old code passed the NaN
    to statsmodels and got [0.03, nan, 0.08] (Holm, m = 3) and [nan, nan, nan] (BH).
    """
    adjusted = adjust_p_values([0.01, float("nan"), 0.04], correction, 0.05)
    assert math.isnan(adjusted[1])
    assert [adjusted[0], adjusted[2]] == pytest.approx([0.02, 0.04])
    assert all(math.isnan(p) for p in adjust_p_values([float("nan")], correction, 0.05))
