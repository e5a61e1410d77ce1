"""Interleaved Rank over a real channel, with the real experiment router: teams per position, both arms
scored through the batchers, the same list on a retry, the exposure carrying the teams, old clients intact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from experiment_router import Router
from proto import events_pb2, ranking_pb2
from ranker_server.dataplane import RankDataPlane, merge_scores
from ranker_server.errors import InvalidInput
from ranker_server.interleaving import interleave
from tests.deploy.test_observability import (
    ADAPTER_RULES,
    SERVING_DASHBOARD,
    Scrape,
    adapter_query,
    panel_target,
    parse_scrape,
    promql_increase,
    promql_increase_by,
    promql_metric_names,
)
from tests.proto.old_schema import message_before
from tests.ranker_server.conftest import MutableSource, Running, serving
from tests.ranker_server.test_server import CANDIDATES, expected_scores, request

pytestmark = pytest.mark.integration

WEIGHTS = ({"click": 1.0, "watch": 0.0}, {"click": 0.5, "watch": 0.5})


def config(control: str = "1", treatment: str = "2") -> dict[str, Any]:
    """Users "il-*" are in the interleaving experiment (tiny/<control> vs tiny/<treatment>); others are not."""
    return {
        "version": 1,
        "defaults": {
            "retrieval": {"model_name": "graph", "model_version": "1"},
            "ranking": {"model_name": "tiny", "model_version": "1", "task_weights": {"click": 1.0}},
        },
        "experiments": [
            {
                "key": "il",
                "kind": "interleaving",
                "stage": "ranking",
                "status": "running",
                "layer": {"name": "ranking", "range": [0.0, 1.0]},
                "condition": {"user_id": {"$regex": "^il-"}},
                "forced": {"interleaved": ["qa-1"]},
                "variations": [
                    {"key": "control", "payload": {"model_name": "tiny", "model_version": control,
                                                   "task_weights": WEIGHTS[0]}},
                    {"key": "treatment", "payload": {"model_name": "tiny", "model_version": treatment,
                                                     "task_weights": WEIGHTS[1]}},
                ],
            }
        ],
    }  # fmt: skip


@pytest.fixture
async def running(repository: Path) -> AsyncIterator[Running]:
    async for running in serving(repository, MutableSource(Router.from_dict(config()))):  # type: ignore[arg-type]
        yield running


def arm_scores(running: Running, version: str, weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-task scores ([T, N]) and merged scores ([N]) of every candidate, computed without the server."""
    model = running.server.repository.snapshot.models[("tiny", version)]
    return merge_scores(model, expected_scores(running, version, CANDIDATES), weights)


async def test_an_interleaved_list_names_the_arm_of_every_position(running: Running) -> None:
    response = await running.stub.Rank(request("il-1", request_id="req-1", top_k=10))
    assert [(a.key, a.model.name, a.model.version) for a in response.arms] == [
        ("control", "tiny", "1"),
        ("treatment", "tiny", "2"),
    ]
    assert not response.HasField("model")  # two models ranked it: see arms
    [assignment] = response.assignments
    assert (assignment.experiment_key, assignment.variant_key) == ("il", "interleaved")
    scores = [arm_scores(running, v, w) for v, w in zip(("1", "2"), WEIGHTS, strict=True)]
    orders = [np.argsort(-merged, kind="stable").tolist() for _, merged in scores]
    picked, teams = interleave(orders[0], orders[1], 10, "il-1", "req-1")
    assert list(response.candidate_ids) == [CANDIDATES[i] for i in picked]
    assert list(response.teams) == teams and set(teams) == {0, 1}
    assert np.all(np.abs(np.cumsum(np.where(np.array(teams) == 1, 1, -1))) <= 1)
    for position, (index, team) in enumerate(zip(picked, teams, strict=True)):
        task_scores, merged = scores[team]
        assert response.merged_scores[position] == pytest.approx(merged[index], rel=1e-5, abs=1e-6)
        for task in range(2):
            assert response.task_scores[task].scores[position] == pytest.approx(
                task_scores[task, index], rel=1e-5, abs=1e-6
            )


async def test_a_retry_gets_the_same_list_and_requests_draw_their_own_coins(running: Running) -> None:
    first = await running.stub.Rank(request("il-2", request_id="retry-me", top_k=10))
    again = await running.stub.Rank(request("il-2", request_id="retry-me", top_k=10))
    assert list(again.candidate_ids) == list(first.candidate_ids) and list(again.teams) == list(first.teams)
    leads = {
        (await running.stub.Rank(request("il-2", request_id=f"r{i}", top_k=4))).teams[0] for i in range(24)
    }
    assert leads == {0, 1}  # either arm picks first, depending on the request's coin


async def test_users_sending_the_same_request_id_draw_their_own_coins(running: Running) -> None:
    """A client numbering requests per session sends every user the same id: one coin for all would put one
    arm first in every user's list (and credit it with the clicks the top position gets)."""
    users = [f"il-feed-{i}" for i in range(24)]
    responses = [await running.stub.Rank(request(user, request_id="feed-1", top_k=4)) for user in users]
    assert {response.teams[0] for response in responses} == {0, 1}


async def test_top_k_zero_interleaves_every_candidate(running: Running) -> None:
    response = await running.stub.Rank(request("il-3", request_id="all"))
    assert sorted(response.candidate_ids) == sorted(CANDIDATES) and len(response.teams) == len(CANDIDATES)


@pytest.mark.timeout(30)
async def test_the_largest_top_k_interleaves_every_candidate_without_stalling(running: Running) -> None:
    """top_k is a uint32: 2**32 - 1 once made the team draft draw coins for 2**31 rounds on the event loop."""
    response = await running.stub.Rank(request("il-3", request_id="all", top_k=2**32 - 1), timeout=10)
    everything = await running.stub.Rank(request("il-3", request_id="all"))
    assert list(response.candidate_ids) == list(everything.candidate_ids)
    assert list(response.teams) == list(everything.teams) and len(response.teams) == len(CANDIDATES)


async def test_users_outside_get_todays_single_model_path(running: Running) -> None:
    response = await running.stub.Rank(request("user-1", top_k=5))
    assert not response.teams and not response.arms and response.model.version == "1"
    assert not response.assignments


async def test_the_exposure_carries_the_teams_of_the_list(running: Running) -> None:
    response = await running.stub.Rank(request("il-4", request_id="logged", top_k=10))
    await running.stub.Rank(request("qa-1", request_id="qa", top_k=10))  # forced: merged, not logged
    await asyncio.sleep(0.2)  # exposures are handed over asynchronously
    [exposure] = running.sink.exposures
    assert exposure.schema_version == events_pb2.SCHEMA_VERSION_2
    assert (exposure.request_id, exposure.user_id, exposure.variant_key) == ("logged", "il-4", "interleaved")
    assert list(exposure.item_ids) == list(response.candidate_ids)
    assert list(exposure.teams) == list(response.teams)
    assert [(a.key, a.model.version) for a in exposure.arms] == [("control", "1"), ("treatment", "2")]
    assert not exposure.HasField("model")


async def test_an_old_schema_client_parses_the_interleaved_response(running: Running) -> None:
    old_response = message_before(ranking_pb2, "RankResponse", {9, 10})
    rank = running.channel.unary_unary(
        "/mtrank.v1.Ranker/Rank",
        request_serializer=ranking_pb2.RankRequest.SerializeToString,
        response_deserializer=old_response.FromString,
    )
    old = await rank(request("il-5", request_id="old-client", top_k=10))
    new = await running.stub.Rank(request("il-5", request_id="old-client", top_k=10))
    assert list(old.candidate_ids) == list(new.candidate_ids) and old.request_id == "old-client"
    assert list(old.merged_scores) == list(new.merged_scores)
    assert [a.variant_key for a in old.assignments] == ["interleaved"]


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_both_arms_score_through_their_batchers_and_count_for_each_model(running: Running) -> None:
    counted = [{"model": "tiny", "version": v, "variant": "il:interleaved"} for v in ("1", "2")]
    execs = [{"model": "tiny", "version": v} for v in ("1", "2")]
    before = [_sample("mtrank_inference_request_success_total", c) for c in counted]
    exec_before = [_sample("mtrank_inference_exec_count_total", e) for e in execs]
    users = [f"il-batch-{i}" for i in range(30)]
    await asyncio.gather(*(running.stub.Rank(request(u, top_k=5)) for u in users))
    for labels, start in zip(counted, before, strict=True):
        assert _sample("mtrank_inference_request_success_total", labels) - start == len(users)
    for labels, start in zip(execs, exec_before, strict=True):
        ran = _sample("mtrank_inference_exec_count_total", labels) - start
        assert 1 <= ran < len(users), "concurrent interleaved requests should share each model's batches"


async def test_arms_sharing_a_model_score_it_once(repository: Path) -> None:
    router = Router.from_dict(config(control="2", treatment="2"))
    async for running in serving(repository, MutableSource(router)):  # type: ignore[arg-type]
        labels = {"model": "tiny", "version": "2"}
        before = _sample("mtrank_inference_count_total", labels)
        response = await running.stub.Rank(request("il-6", request_id="same-model", top_k=10))
        assert _sample("mtrank_inference_count_total", labels) - before == len(CANDIDATES)  # one row each
        assert {a.model.version for a in response.arms} == {"2"}
        scores = [arm_scores(running, "2", w) for w in WEIGHTS]  # one model, two weightings
        orders = [np.argsort(-merged, kind="stable").tolist() for _, merged in scores]
        picked, teams = interleave(orders[0], orders[1], 10, "il-6", "same-model")
        assert (
            list(response.candidate_ids) == [CANDIDATES[i] for i in picked] and list(response.teams) == teams
        )


async def test_a_failing_arm_cancels_the_other_before_the_request_answers(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One arm's failure ends the request; the other arm's scoring must not run on after its models are
    released (``asyncio.gather`` left it running)."""
    released = asyncio.Event()
    scoring = asyncio.Event()

    async def infer(self: RankDataPlane, query: Any, model: Any, *args: Any) -> np.ndarray:
        if model.key == ("tiny", "1"):
            await scoring.wait()
            raise InvalidInput("user_dense", "arm 1 refuses")
        scoring.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            released.set()
            raise
        raise AssertionError("arm 2 ran on")

    monkeypatch.setattr(RankDataPlane, "_infer", infer)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await running.stub.Rank(request("il-cancel", request_id="cancel", top_k=10))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert released.is_set(), "the other arm was still scoring when the request answered"


def _scrape() -> Scrape:
    """What the server's /metrics serves: the default registry (each ``--workers`` process serves its own)."""
    return parse_scrape(generate_latest(REGISTRY).decode())


def _calls(before: Scrape, after: Scrape, method: str) -> dict[str, float]:
    """Calls of ``method`` counted in ``mtrank_requests_total`` between two scrapes, by status code."""
    counted = {
        dict(labels)["code"]: value - before.get((name, labels), 0.0)
        for (name, labels), value in after.items()
        if name == "mtrank_requests_total" and dict(labels)["method"] == method
    }
    return {code: n for code, n in counted.items() if n}


def _hpa_query() -> str:
    """The query behind the custom metric the CPU overlay's HPA scales the ranker on."""
    [(rule, name)] = [
        (rule, name)
        for path in ADAPTER_RULES
        for rule in yaml.safe_load(path.read_text())["rules"]["custom"]
        if rule["name"]["as"] == "mtrank_ranker_requests_per_second"
        for name in promql_metric_names(rule["seriesQuery"])
    ]
    return adapter_query(rule, name)


async def test_the_request_rate_panels_and_the_hpa_count_an_interleaved_call_once(running: Running) -> None:
    """The per-model counters count an interleaved call for each of its two models (right per model); the
    dashboard's Requests/s and the HPA's requests per pod summed them over models: twice the calls."""
    dashboard = json.loads(SERVING_DASHBOARD.read_text())
    before = _scrape()
    users = [f"il-rate-{i}" for i in range(6)]
    for user in users:
        await running.stub.Rank(request(user, top_k=5))
    after = _scrape()
    counted = {
        "Requests/s": promql_increase(panel_target(dashboard, "Requests/s"), before, after),
        "HPA requests per pod": promql_increase(_hpa_query(), before, after),
    }
    assert counted == {"Requests/s": len(users), "HPA requests per pod": len(users)}
    assert _calls(before, after, "Rank") == {"OK": len(users)}


async def test_the_error_panels_count_a_failed_interleaved_call_once_by_its_code(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed interleaved call counted as two failures: beside 4 single-model successes the dashboard's
    Errors/s read 2 calls and its error ratio 2/6 instead of 1/5."""
    infer = RankDataPlane._infer

    async def refuse_interleaved(self: RankDataPlane, query: Any, *args: Any) -> np.ndarray:
        if query.user_id.startswith("il-"):
            raise InvalidInput("user_dense", "the interleaved arms refuse")
        return await infer(self, query, *args)

    monkeypatch.setattr(RankDataPlane, "_infer", refuse_interleaved)
    dashboard = json.loads(SERVING_DASHBOARD.read_text())
    before = _scrape()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await running.stub.Rank(request("il-error", top_k=5))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for i in range(4):
        await running.stub.Rank(request(f"user-error-{i}", top_k=5))
    after = _scrape()
    counted = {
        "Errors/s": promql_increase(panel_target(dashboard, "Errors/s"), before, after),
        "error ratio": promql_increase(panel_target(dashboard, "Errors/s by reason", "B"), before, after),
    }
    assert counted == {"Errors/s": 1, "error ratio": pytest.approx(1 / 5)}
    assert _calls(before, after, "Rank") == {"OK": 4, "INVALID_ARGUMENT": 1}


async def test_traffic_per_variant_counts_an_interleaved_request_once(running: Running) -> None:
    """The panel's shares were of the successes counted per model: 3 interleaved requests whose arms use two
    models read as 6 beside 2 requests outside the experiment (a 6/8 share for 3/5)."""
    dashboard = json.loads(SERVING_DASHBOARD.read_text())
    share = panel_target(dashboard, "Traffic per variant (share of ranked requests)")
    variant_requests, matching, all_requests = share.partition(" / ignoring(variant) group_left ")
    assert matching, share
    before = _scrape()
    for i in range(3):
        await running.stub.Rank(request(f"il-share-{i}", top_k=5))
    for i in range(2):
        await running.stub.Rank(request(f"user-share-{i}", top_k=5))
    after = _scrape()
    lines = {v: n for v, n in promql_increase_by(variant_requests, before, after).items() if n}
    assert lines == {"il:interleaved": 3, "default": 2}  # the exposures' variant: "interleaved"
    assert promql_increase(all_requests, before, after) == 5
