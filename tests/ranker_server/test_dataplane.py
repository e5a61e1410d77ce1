"""Scoring rules of the data plane: per-task transforms, weights, request checks."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from ranker_server.dataplane import RankQuery, check_query, merge_scores

MODEL = SimpleNamespace(task_names=("click", "watch"), binary_tasks=(True, False))


def test_binary_tasks_get_a_stable_sigmoid_and_regression_stays_raw() -> None:
    logits = np.array([[1000.0, 3.0], [-1000.0, -2.5], [0.0, 0.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exp(1000) overflows inside the sigmoid: no warning may escape
        scores, merged = merge_scores(MODEL, logits, {"click": 2.0, "watch": 1.0})
    assert scores.shape == (2, 3) and scores.flags.c_contiguous  # task rows, for the top-k gather
    np.testing.assert_allclose(scores[0], [1.0, 0.0, 0.5])
    np.testing.assert_allclose(scores[1], [3.0, -2.5, 0.0])
    np.testing.assert_allclose(merged, [5.0, -2.5, 1.0])
    assert np.isfinite(scores).all()


def test_no_weights_count_every_task_once_and_unnamed_tasks_count_zero() -> None:
    logits = np.array([[0.0, 4.0]], np.float32)
    assert merge_scores(MODEL, logits, {})[1].tolist() == [4.5]
    assert merge_scores(MODEL, logits, {"watch": 1.0})[1].tolist() == [4.0]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (RankQuery(user_id="", candidate_ids=np.array([1])), "user_id"),
        (RankQuery(user_id="u", candidate_ids=np.arange(11)), "candidate_ids"),
        (RankQuery(user_id="u", candidate_ids=np.array([4, 4])), "candidate_ids"),
        (
            RankQuery(user_id="u", candidate_ids=np.array([1]), user_dense=np.array([np.nan], np.float32)),
            "user_dense",
        ),
    ],
)
def test_request_checks_name_the_field(query: RankQuery, field: str) -> None:
    from ranker_server.errors import InvalidInput

    with pytest.raises(InvalidInput) as info:
        check_query(query, max_candidates=10)
    assert info.value.field == field
