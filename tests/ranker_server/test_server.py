"""The server over a real channel: ranking, exposures, status codes, health, reflection, batching."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from proto import common_pb2, ranking_pb2, ranking_pb2_grpc
from ranker_server.config import BatchingSettings
from ranker_server.exposure import MemorySink
from ranker_server.features import ItemTable, build_rows
from ranker_server.inference import GraphRows
from ranker_server.package import read_package
from ranker_server.routing import RANKING
from ranker_server.server import RankerServer
from tests.ranker_server.conftest import (
    FakeAssignment,
    FakePayload,
    FakeRouter,
    MutableSource,
    Running,
    code_of,
    make_settings,
    serving,
)

pytestmark = pytest.mark.integration

CANDIDATES = list(range(1000, 1040)) + [5, 6]  # the last two are unknown to the item table


def request(user: str, **fields: object) -> ranking_pb2.RankRequest:
    values: dict[str, object] = {
        "user_id": user,
        "candidate_ids": CANDIDATES,
        "user_sparse": [3, 4],
        "user_dense": [0.25],
    }
    values.update(fields)
    return ranking_pb2.RankRequest(**values)


def expected_scores(running: Running, version: str, ids: list[int]) -> np.ndarray:
    """Logits computed directly with the package's session (no batching, no server)."""
    model = running.server.repository.snapshot.models[("tiny", version)]
    package = read_package(model.package.path)
    rows = build_rows(
        package.layout,
        ItemTable(package),
        np.array(ids, np.int64),
        np.array([3, 4], np.int64),
        np.array([0.25], np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.float32),
    )
    return model.runner.run(GraphRows(rows.sparse, rows.dense))


async def test_rank_scores_orders_and_logs_exposure(running: Running) -> None:
    users = [f"user-{i}" for i in range(12)]
    responses = [await running.stub.Rank(request(u, request_id=f"r-{u}", top_k=10)) for u in users]
    versions = {r.model.version for r in responses}
    assert versions == {"1", "2"}, "both variants should be served side by side"
    for user, response in zip(users, responses, strict=True):
        assert response.request_id == f"r-{user}"
        assert len(response.candidate_ids) == 10
        assert list(response.task_names) == ["click", "watch"]
        merged = np.array(response.merged_scores)
        assert np.all(np.diff(merged) <= 0)
        logits = expected_scores(running, response.model.version, list(response.candidate_ids))
        click = np.array(response.task_scores[0].scores)
        watch = np.array(response.task_scores[1].scores)
        np.testing.assert_allclose(click, 1 / (1 + np.exp(-logits[:, 0])), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(watch, logits[:, 1], rtol=1e-5, atol=1e-6)
        weights = (1.0, 0.0) if response.model.version == "1" else (0.5, 0.5)
        np.testing.assert_allclose(merged, weights[0] * click + weights[1] * watch, rtol=1e-5, atol=1e-6)
        [assignment] = response.assignments
        assert assignment.experiment_key == "rank-exp" and assignment.stage == "ranking"
    await asyncio.sleep(0.2)  # exposures are handed over asynchronously
    logged = running.sink.exposures
    assert sorted(e.user_id for e in logged) == sorted(users)
    first = next(e for e in logged if e.user_id == users[0])
    assert first.request_id == f"r-{users[0]}" and list(first.item_ids) == list(responses[0].candidate_ids)
    assert first.model.name == "tiny" and first.event_id and first.schema_version == 1


async def test_default_batching_scores_a_lone_request_directly_and_counts_it(repository) -> None:
    """With the default max_delay_ms 0 an idle batcher skips its queue; results and metrics stay the same."""
    source = MutableSource(FakeRouter())
    server = RankerServer(make_settings(repository, batching=BatchingSettings()), source, MemorySink())
    port = await server.start()
    variant = {"model": "tiny", "version": "1", "variant": "default"}  # "out-*" users get the default
    model = {"model": "tiny", "version": "1"}
    names = {
        "mtrank_inference_request_success_total": variant,
        "mtrank_inference_request_duration_seconds_count": variant,
        "mtrank_inference_queue_duration_seconds_count": variant,
        "mtrank_inference_compute_infer_duration_seconds_count": variant,
        "mtrank_inference_exec_count_total": model,
        "mtrank_inference_batch_size_count": model,
    }
    before = {name: REGISTRY.get_sample_value(name, labels) or 0 for name, labels in names.items()}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = await ranking_pb2_grpc.RankerStub(channel).Rank(request("out-direct", top_k=5))
        running = Running(server, channel, ranking_pb2_grpc.RankerStub(channel), MemorySink(), source)
        logits = expected_scores(running, "1", list(response.candidate_ids))
        np.testing.assert_allclose(response.merged_scores, 1 / (1 + np.exp(-logits[:, 0])), rtol=1e-5)
        for name, labels in names.items():
            assert REGISTRY.get_sample_value(name, labels) - before[name] == 1, name
    finally:
        await server.stop(grace_s=1.0)


async def test_top_k_zero_returns_all_and_full_ranking_is_sorted(running: Running) -> None:
    response = await running.stub.Rank(request("user-a"))
    assert sorted(response.candidate_ids) == sorted(CANDIDATES)


async def test_users_outside_or_forced_get_no_exposure(running: Running) -> None:
    out = await running.stub.Rank(request("out-1"))
    forced = await running.stub.Rank(request("qa-1"))
    assert out.model.version == "1" and len(out.assignments) == 0
    assert len(forced.assignments) == 1
    await asyncio.sleep(0.1)
    assert running.sink.exposures == []


@dataclass
class OverlappingRouter(FakeRouter):
    """Every user is in two ranking experiments, both logged: possible when a layer's experiments hash
    different attributes (user_id, device_id), so their slices do not exclude each other."""

    def assign(self, user_id: str, attributes: Mapping[str, str] | None = None) -> list[FakeAssignment]:
        treatment, control = self.variants[1][1], self.variants[0][1]
        return [
            FakeAssignment("exp-a", "treatment", 1, RANKING, "rank", True, True, treatment),
            FakeAssignment("exp-b", "control", 0, RANKING, "rank", True, True, control),
        ]


async def test_only_the_experiment_that_served_the_list_is_reported_and_logged(repository: Path) -> None:
    async for running in serving(repository, MutableSource(OverlappingRouter())):
        response = await running.stub.Rank(request("user-1", request_id="two-experiments", top_k=5))
        assert response.model.version == "2"  # exp-a's treatment, the first experiment the user is in
        assert [(a.experiment_key, a.variant_key) for a in response.assignments] == [("exp-a", "treatment")]
        await asyncio.sleep(0.1)
        [exposure] = running.sink.exposures  # none for exp-b: its control's model never ranked this list
        logged = (exposure.experiment_key, exposure.variant_key, exposure.model.version)
        assert logged == ("exp-a", "treatment", "2")
        assert list(exposure.item_ids) == list(response.candidate_ids)


async def test_unknown_item_ids_count_as_oov(running: Running) -> None:
    before = REGISTRY.get_sample_value("mtrank_item_oov_total", {"model": "tiny", "version": "1"}) or 0
    await running.stub.Rank(request("out-2"))
    after = REGISTRY.get_sample_value("mtrank_item_oov_total", {"model": "tiny", "version": "1"})
    assert after - before == 2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"candidate_ids": list(range(6000))}, "candidate_ids"),
        ({"candidate_ids": [1000, 1001, 1000]}, "candidate_ids"),
        ({"user_dense": [math.nan]}, "user_dense"),
        ({"user_dense": [math.inf]}, "user_dense"),
        ({"user_dense": [1.0, 2.0]}, "user_dense"),
        ({"user_sparse": [1]}, "user_sparse"),
        ({"candidate_ids": [1000], "candidate_dense": [1.0, math.nan]}, "candidate_dense"),
        ({"candidate_ids": [1000], "candidate_dense": [1.0]}, "candidate_dense"),
        ({"candidate_ids": [], "candidate_sparse": [1]}, "candidate_sparse"),
        ({"candidate_ids": []}, "candidate_ids"),  # no retrieval service configured
        ({"model": common_pb2.ModelRef(name="tiny", version="9")}, "model"),  # not served
        ({"model": common_pb2.ModelRef(name="tiny")}, "model"),  # half a reference
    ],
)
async def test_invalid_requests_name_the_field(running: Running, fields: dict, field: str) -> None:
    user = fields.pop("user_id", "user-x")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.stub.Rank(request(user, **fields))
    assert code_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}:"), info.value.details()


async def test_a_pinned_model_scores_without_the_ranking_experiment(running: Running) -> None:
    users = [f"user-{i}" for i in range(8)]  # split over both variants by the experiment
    for version, weights in (("1", (1.0, 0.0)), ("2", (1.0, 1.0))):  # v1 is the default: its weights
        for user in users:
            response = await running.stub.Rank(
                request(user, model=common_pb2.ModelRef(name="tiny", version=version), top_k=5)
            )
            assert response.model.version == version and len(response.assignments) == 0
            logits = expected_scores(running, version, list(response.candidate_ids))
            click, watch = 1 / (1 + np.exp(-logits[:, 0])), logits[:, 1]
            np.testing.assert_allclose(
                response.merged_scores, weights[0] * click + weights[1] * watch, rtol=1e-5, atol=1e-6
            )
    await asyncio.sleep(0.1)
    assert running.sink.exposures == []  # no ranking assignment was made, so none is logged


async def test_variant_naming_an_unserved_model_is_not_found(running: Running) -> None:
    running.source.current = FakeRouter(variants=(("ghost", FakePayload("tiny", "9")),))
    # the repository has not adopted the new router yet: the old snapshot still serves
    assert (await running.stub.Rank(request("user-1"))).model.version in {"1", "2"}
    assert not await running.server.repository.refresh()  # tiny/9 does not exist: the swap is refused
    running.server.repository._snapshot = type(running.server.repository.snapshot)(
        running.source.current, running.server.repository.snapshot.models
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.stub.Rank(request("user-1"))
    assert code_of(info.value) == grpc.StatusCode.NOT_FOUND
    assert "tiny/9" in info.value.details()


async def test_concurrent_requests_are_batched_and_match_unbatched(running: Running) -> None:
    labels = {"model": "tiny", "version": "1"}
    before = REGISTRY.get_sample_value("mtrank_inference_exec_count_total", labels) or 0
    users = [f"out-{i}" for i in range(40)]  # all on the default variant: one batcher
    responses = await asyncio.gather(*(running.stub.Rank(request(u)) for u in users))
    execs = REGISTRY.get_sample_value("mtrank_inference_exec_count_total", labels) - before
    assert execs < len(users), "concurrent requests of one variant should share ONNX Runtime calls"
    alone = await running.stub.Rank(request("out-solo"))
    for response in responses:
        assert list(response.candidate_ids) == list(alone.candidate_ids)
        np.testing.assert_allclose(response.merged_scores, alone.merged_scores, rtol=1e-5)


async def test_large_candidate_lists_are_split_across_batches(running: Running) -> None:
    ids = list(range(2000, 2000 + 1000))  # max_batch_rows is 256 in the test settings
    labels = {"model": "tiny", "version": "1"}
    before = REGISTRY.get_sample_value("mtrank_inference_exec_count_total", labels) or 0
    response = await running.stub.Rank(request("out-big", candidate_ids=ids))
    assert sorted(response.candidate_ids) == ids
    assert REGISTRY.get_sample_value("mtrank_inference_exec_count_total", labels) - before >= 4


async def test_health_and_reflection(running: Running) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    for service in ("", "mtrank.v1.Ranker"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    names = set()
    async for reply in stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    ):
        names |= {s.name for s in reply.list_services_response.service}
    assert {"mtrank.v1.Ranker", "grpc.health.v1.Health"} <= names


async def test_success_and_failure_metrics_are_labelled_by_variant(running: Running) -> None:
    labels = {"model": "tiny", "version": "1", "variant": "default"}
    before = REGISTRY.get_sample_value("mtrank_inference_request_success_total", labels) or 0
    await running.stub.Rank(request("out-metrics"))
    assert REGISTRY.get_sample_value("mtrank_inference_request_success_total", labels) == before + 1
    assert REGISTRY.get_sample_value("mtrank_inference_request_duration_seconds_count", labels) >= 1
    assert (
        REGISTRY.get_sample_value(
            "mtrank_model_load_state", {"model": "tiny", "version": "1", "mtrank_model_load_state": "ready"}
        )
        == 1
    )
    # What it got, and what it asked for: CUDA, which onnxruntime-gpu (pyproject.toml) offers without a GPU.
    tiny_1 = {"model": "tiny", "version": "1"}
    providers = {"provider": "CPUExecutionProvider", "requested": "CUDAExecutionProvider"}
    assert REGISTRY.get_sample_value("mtrank_execution_provider", {**tiny_1, **providers}) == 1
