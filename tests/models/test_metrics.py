"""Exact AUC against the pairwise definition (ties count half) and MSE."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.layers import TaskSpec
from models.metrics import average_precision, mse, roc_auc, selection_score, task_metrics


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-3, 3)), min_size=2, max_size=40))
def test_auc_matches_pairwise_definition_with_ties(rows: list[tuple[bool, int]]) -> None:
    labels = np.array([int(y) for y, _ in rows])
    scores = np.array([float(s) for _, s in rows])
    if labels.min() == labels.max():
        assert np.isnan(roc_auc(labels, scores))
    else:
        assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


def test_auc_reference_values() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(np.array([1, 0]), np.array([2.0, 1.0])) == 1.0
    assert roc_auc(np.array([1, 0]), np.array([1.0, 1.0])) == 0.5


def test_task_metrics_and_selection_score() -> None:
    tasks = (TaskSpec("click"), TaskSpec("rating", "regression"))
    outputs = np.array([[0.9, 3.0], [0.1, 4.0], [0.5, 5.0]])
    labels = np.array([[1, 3.0], [0, 5.0], [1, 5.0]])
    metrics = task_metrics(outputs, labels, tasks)
    assert metrics == {"auc/click": 1.0, "mse/rating": pytest.approx(1 / 3)}
    assert selection_score(metrics) == pytest.approx(1 - 1 / 3)
    assert mse(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == 2.0


def test_average_precision_reference_values() -> None:
    # sklearn's documented example: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333...
    assert average_precision(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(5 / 6)
    # a tie enters as one threshold: P = 1/2 at R = 1/2, then P = 2/3 at R = 1
    assert average_precision(np.array([1, 0, 1]), np.array([0.5, 0.5, 0.2])) == pytest.approx(0.25 + 1 / 3)
    assert average_precision(np.array([1, 1, 0]), np.array([3.0, 2.0, 1.0])) == 1.0
    assert np.isnan(average_precision(np.array([0, 0]), np.array([0.1, 0.2])))


def test_average_precision_of_a_nan_score_is_undefined() -> None:
    # a NaN score has no place in the ranking; it used to be ranked last, giving 0.5 * 1 + 0.5 * 0.5 = 0.75
    labels, scores = np.array([1, 0, 1, 0]), np.array([np.nan, 0.3, 0.9, 0.1])
    assert np.isnan(average_precision(labels, scores))
    assert np.isnan(roc_auc(labels, scores))  # the same answer as AUC


def test_a_non_finite_mse_is_never_the_best_epoch() -> None:
    """A NaN/inf MSE was left out like a one-class AUC, so a diverged regression head scored 0.7 > -0.3."""
    healthy = {"auc/click": 0.7, "mse/rating": 1.0}
    assert selection_score(healthy) == pytest.approx(-0.3)
    for bad in (np.inf, np.nan):
        assert selection_score({"auc/click": 0.7, "mse/rating": bad}) == -np.inf
    assert selection_score({"auc/click": np.nan, "mse/rating": 1.0}) == -1.0  # one class: AUC left out
