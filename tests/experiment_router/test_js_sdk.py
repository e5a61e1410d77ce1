"""Replays GrowthBook's JavaScript SDK (1.8.0) on hash attribute values of every JSON type: booleans, numbers
beyond 2**53 or in exponent notation, NaN and infinities, arrays, objects, NUL and surrogate strings.

The fixture (data/js_sdk_runs.json, written by `python -m tests.experiment_router.make_js_fixtures js-sdk`)
holds the SDK's verdicts; the reference evaluator, Router.assign and Router.assign_many must reproduce them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from experiment_router import Router
from experiment_router.evaluation import EvalContext, run_experiment, spec_from_growthbook
from tests.experiment_router.helpers import base_config
from tests.experiment_router.jsnode import decode

FIXTURE = json.loads((Path(__file__).parent / "data" / "js_sdk_runs.json").read_text(encoding="utf-8"))
EXPERIMENTS: list[dict[str, Any]] = FIXTURE["experiments"]
CASES = [(index, decode(value), tuple(result)) for index, value, result in FIXTURE["cases"]]


def _router(exp: dict[str, Any], attribute: str) -> Router:
    """Our config for the SDK experiment `exp`, hashing `attribute`."""
    n = len(exp["variations"])
    weights = exp.get("weights") or [1 / n] * n
    data = base_config()
    data["experiments"] = [
        {
            "key": exp["key"],
            "stage": "ranking",
            "status": "running",
            "seed": exp.get("seed"),
            "hash_attribute": attribute,
            "hash_version": exp["hashVersion"],
            "coverage": exp.get("coverage", 1.0),
            "layer": {"name": exp["namespace"][0], "range": exp["namespace"][1:]}
            if "namespace" in exp
            else None,
            "variations": [
                {"key": f"v{j}", "weight": w, "payload": {"model_name": "m", "model_version": str(j)}}
                for j, w in enumerate(weights)
            ],
        }
    ]
    return Router.from_dict(data)


def test_fixture_covers_every_kind_of_value() -> None:
    values = [v for _, v, _ in CASES]
    assert {type(v).__name__ for v in values} >= {"bool", "NoneType", "int", "float", "list", "dict", "str"}
    assert sum(r[0] for _, _, r in CASES) > len(CASES) / 3  # many enrolled, so buckets are compared


@pytest.mark.parametrize(("index", "value", "js"), CASES, ids=[f"{i}:{v!r:.30}" for i, v, _ in CASES])
def test_reference_evaluator_and_router_reproduce_the_js_sdk(index: int, value: Any, js: tuple) -> None:
    in_experiment, variation, hash_used, bucket = js
    exp = EXPERIMENTS[index]
    res = run_experiment(spec_from_growthbook(exp), EvalContext(attributes={"account": value}))
    assert (res.in_experiment, res.variation_id, res.hash_used) == (in_experiment, variation, hash_used)
    if bucket is not None:
        assert res.bucket == bucket
    (mine,) = _router(exp, "account").assign("u", {"account": value})
    assert (mine.in_experiment, mine.should_log) == (in_experiment, hash_used)
    assert mine.variation_id == (variation if in_experiment else -1)


@pytest.mark.parametrize("index", range(len(EXPERIMENTS)))
def test_bulk_path_reproduces_the_js_sdk_with_values_as_ids(index: int) -> None:
    cases = [(v, r) for i, v, r in CASES if i == index]
    ids = [v for v, _ in cases if not isinstance(v, list | dict)]  # ids are scalars
    expected = [r[1] if r[0] else -1 for v, r in cases if not isinstance(v, list | dict)]
    got = _router(EXPERIMENTS[index], "user_id").assign_many(ids)[EXPERIMENTS[index]["key"]]
    assert np.array_equal(got, expected)
