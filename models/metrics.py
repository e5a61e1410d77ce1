"""Exact offline metrics: ROC-AUC from ranks (Mann-Whitney U, ties averaged), average precision and MSE."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from models.layers import TaskSpec


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC-AUC = P(score_pos > score_neg) + 0.5 P(tie); NaN when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall step curve, ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score
    thresholds (tied scores enter together, as in sklearn's average_precision_score); NaN without positives
    or with a NaN score (which has no place in the ranking). GRec's Table 1 reports it."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    scores = np.asarray(scores, dtype=np.float64)
    if n_pos == 0 or np.isnan(scores).any():
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    ordered, hits = scores[order], labels[order]
    last_of_threshold = np.r_[ordered[1:] != ordered[:-1], True]
    tp = np.cumsum(hits)[last_of_threshold]
    fp = np.cumsum(~hits)[last_of_threshold]
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * tp / (tp + fp)))


def mse(targets: np.ndarray, predictions: np.ndarray) -> float:
    diff = np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return float(np.mean(diff * diff))


def task_metrics(outputs: np.ndarray, labels: np.ndarray, tasks: Sequence[TaskSpec]) -> dict[str, float]:
    """``{"auc/<task>": ..., "mse/<task>": ...}``: AUC for binary tasks (on logits), MSE for regression."""
    metrics = {}
    for t, task in enumerate(tasks):
        if task.type == "binary":
            metrics[f"auc/{task.name}"] = roc_auc(labels[:, t], outputs[:, t])
        else:
            metrics[f"mse/{task.name}"] = mse(labels[:, t], outputs[:, t])
    return metrics


def selection_score(metrics: Mapping[str, float]) -> float:
    """Early-stopping criterion of the DML reference code: sum of AUCs minus sum of MSEs (higher is better).

    An undefined AUC (NaN: one class in validation) is left out; an MSE that is NaN or infinite comes from
    predictions that are, and scores -inf: leaving it out made a diverged regression head the best epoch.
    """
    if any(k.startswith("mse/") and not np.isfinite(v) for k, v in metrics.items()):
        return -math.inf
    return sum(v if k.startswith("auc/") else -v for k, v in metrics.items() if np.isfinite(v))
