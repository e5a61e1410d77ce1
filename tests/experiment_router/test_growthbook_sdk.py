"""Differential test against GrowthBook's Python SDK 4.0.0 (a dev dependency): random experiments, awkward
users (unicode beyond the BMP, NUL characters, empty and very long ids, numbers beyond 2**53 and in
exponent notation), and the reference evaluator, Router.assign and Router.assign_many must all agree with it.

Where the Python SDK departs from the JavaScript SDK, JavaScript wins and those values are left out here
(checked against node in test_jsvalues.py instead): the Python SDK never hashes booleans, infinities, lists
or objects, which JavaScript prints as "true", "Infinity", "1,2", "[object Object]".
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from experiment_router import Router
from experiment_router.evaluation import EvalContext, run_experiment
from tests.experiment_router.helpers import base_config

growthbook = pytest.importorskip("growthbook", reason="GrowthBook's Python SDK is a dev dependency")

COUNTRIES = ["NL", "DE", "US"]


def _random_id(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.6:
        return f"user-{rng.getrandbits(40)}"
    if kind < 0.82:
        return "".join(rng.choice("aé中😀𝄞\x00 \t-") for _ in range(rng.randint(1, 12)))
    if kind < 0.97:
        return rng.choice(["", "\x00", "a\x00", "\x00\x00", "0", "false"])
    return rng.choice("x😀é") * rng.randint(1_000, 14_000)


def _random_number(rng: random.Random) -> int | float:
    kind = rng.random()
    if kind < 0.3:
        return rng.randint(-(10**24), 10**24)
    if kind < 0.6:
        return rng.uniform(-1, 1) * 10 ** rng.randint(-12, 30)
    if kind < 0.8:
        return rng.randint(-1000, 1000)
    return rng.choice([0, 0.0, -0.0, 2273199612178534537, 1e21, 1e-7, 123e-20, 2**53 + 1])


def _random_experiment(rng: random.Random, i: int) -> dict[str, Any]:
    n = rng.randint(2, 4)
    raw = [rng.uniform(0.1, 1) for _ in range(n)]
    exp: dict[str, Any] = {
        "key": f"exp-{i}-{rng.getrandbits(20)}",
        "hash_version": rng.choice([1, 2]),
        "coverage": round(rng.uniform(0.3, 1), 3),
        "weights": [w / sum(raw) for w in raw],
        "seed": rng.choice([None, f"seed-{i}", "种子😀"]),
        "hash_attribute": rng.choice(["user_id", "user_id", "account"]),
        "layer": (f"layer-{i}", *sorted(round(rng.random(), 3) for _ in range(2)))
        if rng.random() < 0.4
        else None,
        "condition": {"country": {"$in": rng.sample(COUNTRIES, 2)}} if rng.random() < 0.3 else None,
    }
    if exp["layer"] and exp["layer"][1] == exp["layer"][2]:
        exp["layer"] = None
    return exp


def _sdk(exp: dict[str, Any], attributes: dict[str, Any]) -> tuple[bool, int, bool]:
    gb = growthbook.GrowthBook(attributes=attributes)
    res = gb.run(
        growthbook.Experiment(
            key=exp["key"],
            variations=list(range(len(exp["weights"]))),
            weights=exp["weights"],
            coverage=exp["coverage"],
            hashAttribute=exp["hash_attribute"],
            hashVersion=exp["hash_version"],
            seed=exp["seed"],
            namespace=exp["layer"],
            condition=exp["condition"],
        )
    )
    return res.inExperiment, res.variationId if res.inExperiment else -1, res.hashUsed


def _router(exp: dict[str, Any]) -> Router:
    data = base_config()
    data["experiments"] = [
        {
            "key": exp["key"],
            "stage": "ranking",
            "status": "running",
            "seed": exp["seed"],
            "hash_attribute": exp["hash_attribute"],
            "hash_version": exp["hash_version"],
            "coverage": exp["coverage"],
            "condition": exp["condition"],
            "layer": {"name": exp["layer"][0], "range": list(exp["layer"][1:])} if exp["layer"] else None,
            "variations": [
                {"key": f"v{j}", "weight": w, "payload": {"model_name": "m", "model_version": str(j)}}
                for j, w in enumerate(exp["weights"])
            ],
        }
    ]
    return Router.from_dict(data)


@pytest.mark.slow
def test_router_agrees_with_growthbook_python_sdk() -> None:
    rng = random.Random(4)
    checked = enrolled = 0
    for i in range(30):
        exp = _random_experiment(rng, i)
        router = _router(exp)
        (compiled,) = router._experiments
        users = [
            (_random_id(rng), _random_number(rng), rng.choice(COUNTRIES)) for _ in range(200 if i % 3 else 40)
        ]
        ids = [u for u, _, _ in users]
        for _, account, country in users[:2]:  # bulk: attributes are shared by the whole call
            bulk = router.assign_many(ids, {"account": account, "country": country})[exp["key"]]
            for k, user in enumerate(ids):
                expected = _sdk(exp, {"user_id": user, "account": account, "country": country})
                assert bulk[k] == expected[1], (exp, user, account)
        for user, account, country in users:
            attributes = {"user_id": user, "account": account, "country": country}
            expected = _sdk(exp, attributes)
            ref = run_experiment(compiled.spec, EvalContext(attributes=attributes))
            (mine,) = router.assign(user, {"account": account, "country": country})
            assert (
                ref.in_experiment,
                ref.variation_id if ref.in_experiment else -1,
                ref.hash_used,
            ) == expected
            assert (mine.in_experiment, mine.variation_id, mine.should_log) == expected, (exp, user, account)
            checked += 1
            enrolled += expected[0]
    assert checked > 4000 and enrolled > checked / 5  # the sample really enrols users


@pytest.mark.parametrize("value", [True, False, math.inf, -math.inf, [1, 2], {"a": 1}])
def test_values_where_the_python_sdk_departs_from_javascript(value: Any) -> None:
    """The Python SDK leaves these users out; the JavaScript SDK (and this router) hash String(value)."""
    exp = {
        "key": "departs",
        "hash_version": 2,
        "coverage": 1.0,
        "weights": [0.5, 0.5],
        "seed": None,
        "hash_attribute": "account",
        "layer": None,
        "condition": None,
    }
    assert _sdk(exp, {"account": value}) == (False, -1, False)
    (mine,) = _router(exp).assign("u", {"account": value})
    assert mine.in_experiment == (value is not False)
