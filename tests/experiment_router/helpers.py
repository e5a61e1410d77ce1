"""Config builders shared by the router tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).parents[2] / "experiment_router" / "examples"

_BASE: dict[str, Any] = {
    "version": 1,
    "defaults": {
        "retrieval": {"model_name": "ssmtl-retrieval-only", "model_version": "1"},
        "ranking": {
            "model_name": "mmoe",
            "model_version": "1",
            "task_weights": {"click": 1.0, "rating": 0.1},
        },
    },
    "experiments": [
        {
            "key": "exp-a",
            "stage": "ranking",
            "status": "running",
            "variations": [
                {"key": "control", "payload": {"model_name": "mmoe", "model_version": "1"}},
                {"key": "treatment", "payload": {"model_name": "mmoe+dml", "model_version": "1"}},
            ],
        }
    ],
}


def base_config() -> dict[str, Any]:
    """A fresh copy of a minimal valid config with one running ranking experiment."""
    return copy.deepcopy(_BASE)


def experiment(key: str, stage: str = "ranking", **fields: Any) -> dict[str, Any]:
    """A running two-arm experiment on `stage` with equal weights, overridable field by field."""
    model = "mmoe" if stage == "ranking" else "ssmtl"
    exp = {
        "key": key,
        "stage": stage,
        "status": "running",
        "variations": [
            {"key": "control", "payload": {"model_name": model, "model_version": "1"}},
            {"key": "treatment", "payload": {"model_name": model, "model_version": "2"}},
        ],
    }
    exp.update(fields)
    return exp
