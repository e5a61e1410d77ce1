"""SRM chi-square against scipy and the 0.001 flag."""

from __future__ import annotations

import pytest
from scipy import stats as scipy_stats

from analytics.stats.srm import SRM_THRESHOLD, srm_flagged, srm_p_value


def test_srm_matches_scipy_chisquare() -> None:
    assert srm_p_value([1000, 1200], [0.5, 0.5]) == pytest.approx(
        scipy_stats.chisquare([1000, 1200], [1100, 1100]).pvalue, rel=1e-12
    )
    # chi2 = 2 * 100^2 / 1100 = 18.1818 on 1 df
    assert round(srm_p_value([1000, 1200], [0.5, 0.5]), 8) == 0.00002008


def test_srm_unequal_weights_are_normalised() -> None:
    p = srm_p_value([2000, 1000, 1000], [2, 1, 1])
    assert p == pytest.approx(1.0)
    assert srm_p_value([500, 500], [0.8, 0.2]) < SRM_THRESHOLD


def test_srm_flag() -> None:
    assert srm_flagged(srm_p_value([1000, 1200], [0.5, 0.5]))
    assert not srm_flagged(srm_p_value([1000, 1030], [0.5, 0.5]))
    assert not srm_flagged(None)


@pytest.mark.parametrize(
    ("counts", "weights", "message"),
    [([1, 2], [1.0], "2 counts but 1 weights"), ([5], [1.0], "two variants"), ([1, 2], [0.0, 1.0], "> 0")],
)
def test_srm_rejects_bad_input(counts, weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        srm_p_value(counts, weights)
