"""Offline evaluation: batched predictions, exact per-task metrics, and their summary over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from models.base import MultiTaskModel
from models.data import TabularData
from models.metrics import task_metrics


class HasTestMetrics(Protocol):
    """A per-seed result: its test metrics are what gets summarised."""

    test: dict[str, float]


@torch.no_grad()
def predict(
    model: MultiTaskModel, data: TabularData, device: torch.device, batch_size: int = 8192
) -> np.ndarray:
    model.eval()
    outputs = []
    for start in range(0, len(data), batch_size):
        batch = data.torch_batch(slice(start, start + batch_size))
        outputs.append(model({k: v.to(device) for k, v in batch.items()}).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, len(data.tasks)), np.float32)


def evaluate_model(model: MultiTaskModel, data: TabularData, device: torch.device) -> dict[str, float]:
    return task_metrics(predict(model, data, device), data.labels, data.tasks)


def summarize(results: Sequence[HasTestMetrics]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation and standard error over seeds of every test metric."""
    summary = {}
    for key in results[0].test:
        values = np.array([r.test[key] for r in results])
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[key] = {
            "mean": float(values.mean()),
            "std": std,
            "sem": std / math.sqrt(len(values)),
            "n": len(values),
        }
    return summary


def markdown_table(model: str, summary: dict[str, dict[str, float]]) -> str:
    lines = ["| model | metric | mean | std | seeds |", "|---|---|---:|---:|---:|"]
    for key, stats in summary.items():
        lines.append(f"| {model} | {key} | {stats['mean']:.4f} | {stats['std']:.4f} | {stats['n']} |")
    return "\n".join(lines) + "\n"
