"""Exact offline metrics: ROC-AUC from ranks (Mann-Whitney U, ties averaged) and MSE, keyed per task."""

from __future__ import annotations

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
    """Early-stopping criterion of the DML reference code: sum of AUCs minus sum of MSEs (higher is better)."""
    return sum(v if k.startswith("auc/") else -v for k, v in metrics.items() if np.isfinite(v))
