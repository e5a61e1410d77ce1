"""Requests without candidates go to the retrieval service with the retrieval-layer variant's model."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio

from proto import common_pb2, ranking_pb2, ranking_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from ranker_server.exposure import MemorySink
from ranker_server.retrieval_client import RetrievalClient
from ranker_server.routing import RETRIEVAL
from ranker_server.server import RankerServer
from tests.ranker_server.conftest import (
    FakeAssignment,
    FakePayload,
    FakeRouter,
    MutableSource,
    code_of,
    make_settings,
)

pytestmark = pytest.mark.integration


class FakeRetriever(retrieval_pb2_grpc.RetrieverServicer):
    def __init__(self, max_k: int = 1000) -> None:
        self.requests: list[retrieval_pb2.RetrieveRequest] = []
        self.fail = False
        self.max_k = max_k

    async def ListModels(self, request, context):  # noqa: N802
        return retrieval_pb2.ListModelsResponse(max_k=self.max_k)

    async def Retrieve(self, request, context):  # noqa: N802
        self.requests.append(request)
        if self.fail:
            await context.abort(grpc.StatusCode.INTERNAL, "index exploded")
        if not 1 <= request.k <= self.max_k:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"k: must be in 1..{self.max_k}, got {request.k}"
            )
        if request.user_id.startswith("unknown-"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_features: not in the index")
        ids = list(range(1000, 1000 + request.k))
        return retrieval_pb2.RetrieveResponse(
            request_id=request.request_id,
            candidate_ids=ids,
            scores=[float(-i) for i in range(request.k)],
            model=common_pb2.ModelRef(
                name=request.model.name or "graph", version=request.model.version or "1"
            ),
        )


@dataclass
class TwoLayerRouter(FakeRouter):
    """Adds a retrieval experiment: users "r-*" get graph/2, others stay on the default graph/1."""

    def assign(self, user_id: str, attributes: Mapping[str, str] | None = None) -> list[FakeAssignment]:
        ranking = super().assign(user_id, attributes)
        if user_id.startswith("r-"):
            extra = FakeAssignment(
                "ret-exp", "wide", 1, RETRIEVAL, "retrieval", True, True, FakePayload("graph", "2")
            )
        else:
            extra = FakeAssignment(
                "ret-exp", None, -1, RETRIEVAL, "retrieval", False, False, self.retrieval_default
            )
        return [*ranking, extra]


async def test_empty_candidates_are_retrieved_with_the_layer_variant(repository: Path) -> None:
    retriever = FakeRetriever()
    upstream = aio.server()
    retrieval_pb2_grpc.add_RetrieverServicer_to_server(retriever, upstream)
    upstream_port = upstream.add_insecure_port("127.0.0.1:0")
    await upstream.start()
    client = RetrievalClient(f"127.0.0.1:{upstream_port}")
    sink = MemorySink()
    server = RankerServer(
        make_settings(repository, retrieve_k=30), MutableSource(TwoLayerRouter()), sink, client
    )
    port = await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranking_pb2_grpc.RankerStub(channel)
            in_exp = await stub.Rank(ranking_pb2.RankRequest(user_id="r-1", top_k=5, retrieve_k=12))
            default = await stub.Rank(ranking_pb2.RankRequest(user_id="out-9", top_k=5))
            with_candidates = await stub.Rank(
                ranking_pb2.RankRequest(user_id="r-2", candidate_ids=[1000, 1001])
            )
            assert len(retriever.requests) == 2, "given candidates skip retrieval"
            first, second = retriever.requests
            assert (first.user_id, first.k, first.model.name, first.model.version) == (
                "r-1",
                12,
                "graph",
                "2",
            )
            assert (second.k, second.model.version) == (30, "1")
            assert set(in_exp.candidate_ids) <= set(range(1000, 1012)) and len(in_exp.candidate_ids) == 5
            assert (in_exp.retrieval_model.name, in_exp.retrieval_model.version) == ("graph", "2")
            assert default.retrieval_model.version == "1"
            assert not with_candidates.HasField("retrieval_model")
            assert {a.stage for a in in_exp.assignments} == {"ranking", "retrieval"}
            await asyncio.sleep(0.2)
            stages = sorted((e.user_id, e.stage) for e in sink.exposures)
            # r-2 gave candidates: its retrieval variant did not act, so only its ranking exposure is logged
            assert stages == [("r-1", "ranking"), ("r-1", "retrieval"), ("r-2", "ranking")]
            retrieval_exposure = next(e for e in sink.exposures if e.stage == "retrieval")
            assert retrieval_exposure.model.version == "2" and list(retrieval_exposure.item_ids) == list(
                in_exp.candidate_ids
            )

            retriever.fail = True
            with pytest.raises(aio.AioRpcError) as info:
                await stub.Rank(ranking_pb2.RankRequest(user_id="r-3"))
            assert code_of(info.value) == grpc.StatusCode.UNAVAILABLE
            assert info.value.details() == (
                "the retrieval service is unavailable (INTERNAL); send candidate_ids or retry"
            )  # its own words and its address stay in the ranker's log
    finally:
        await server.stop(1)
        await client.close()
        await upstream.stop(0)


async def test_a_request_that_retrieval_fails_logs_no_exposure(repository: Path) -> None:
    """Users "r-*" are logged in a ranking and a retrieval experiment; a request that retrieval cannot serve
    (refused: INVALID_ARGUMENT, or failing: UNAVAILABLE) was answered with an error: no exposure is logged."""
    retriever = FakeRetriever()
    upstream, port = await _start_fake(retriever)
    client = RetrievalClient(f"127.0.0.1:{port}")
    sink = MemorySink()
    server = RankerServer(make_settings(repository), MutableSource(TwoLayerRouter()), sink, client)
    ranker_port = await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{ranker_port}") as channel:
            stub = ranking_pb2_grpc.RankerStub(channel)
            with pytest.raises(aio.AioRpcError) as info:  # refused by the fake; in the ranking experiment
                await stub.Rank(ranking_pb2.RankRequest(user_id="unknown-r-1"), timeout=10)
            assert code_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
            retriever.fail = True
            with pytest.raises(aio.AioRpcError) as info:
                await stub.Rank(ranking_pb2.RankRequest(user_id="r-1"), timeout=10)
            assert code_of(info.value) == grpc.StatusCode.UNAVAILABLE
            retriever.fail = False
            served = await stub.Rank(ranking_pb2.RankRequest(user_id="r-1", top_k=3), timeout=10)
        await asyncio.sleep(0.2)
        logged = sorted((e.user_id, e.request_id, e.stage) for e in sink.exposures)
        assert logged == [("r-1", served.request_id, "ranking"), ("r-1", served.request_id, "retrieval")]
    finally:
        await server.stop(1)
        await client.close()
        await upstream.stop(0)


RETRIEVAL_CONFIG = """\
version: 1
defaults:
  retrieval: {{model_name: graph, model_version: "1"}}
  ranking: {{model_name: tiny, model_version: "1"}}
experiments:
  - key: ret-exp
    stage: retrieval
    status: running
    layer: {{name: retrieval, range: [0.0, 1.0]}}
    variations:
      - {{key: control, weight: 0.5, payload: {{model_name: graph, model_version: "1"}}}}
      - {{key: wide, weight: 0.5, payload: {{model_name: graph, model_version: "{wide}"}}}}
"""


class ModelList(retrieval_pb2_grpc.RetrieverServicer):
    """ListModels only, on a thread-pool server: the ranker asks it from blocking code (start, watcher thread)."""

    def __init__(self, served: tuple[tuple[str, str], ...]) -> None:
        self.served = served

    def ListModels(self, request, context):  # noqa: N802
        return retrieval_pb2.ListModelsResponse(
            models=[common_pb2.ModelRef(name=n, version=v) for n, v in self.served]
        )


def _serve_models(servicer: ModelList, port: int = 0) -> tuple[grpc.Server, int]:
    from concurrent import futures

    upstream = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    retrieval_pb2_grpc.add_RetrieverServicer_to_server(servicer, upstream)
    port = upstream.add_insecure_port(f"127.0.0.1:{port}")
    upstream.start()
    return upstream, port


def _write(path: Path, text: str, bump: float) -> None:
    import os
    import time

    path.write_text(text)
    os.utime(path, (time.time() + bump,) * 2)


async def _wait_until(predicate, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_retrieval_versions_are_checked_against_the_retrieval_service(
    repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from experiment_router.errors import ConfigError
    from ranker_server.app import watched_router

    config = tmp_path / "experiments.yaml"
    retriever = ModelList(served=(("graph", "1"), ("graph", "2")))
    upstream, port = _serve_models(retriever)
    settings = make_settings(
        repository, experiments=config, retrieval=f"127.0.0.1:{port}", poll_interval_s=0.05
    )
    try:
        _write(config, RETRIEVAL_CONFIG.format(wide="9"), 0)
        with pytest.raises(
            ConfigError, match="retrieval model graph/9"
        ):  # at start: the server refuses to run
            with watched_router(settings):
                pass
        _write(config, RETRIEVAL_CONFIG.format(wide="2"), 10)
        with caplog.at_level(logging.WARNING), watched_router(settings) as source:
            first = source.current
            _write(config, RETRIEVAL_CONFIG.format(wide="9"), 20)  # a hot reload naming an unserved version
            await _wait_until(lambda: "graph/9 is not served by the retrieval service" in caplog.text)
            assert source.current is first, "the reload is refused, the previous config stays"

            upstream.stop(0)  # retrieval down: a good new config waits instead of going unchecked
            retriever.served = (("graph", "1"), ("graph", "3"))
            _write(config, RETRIEVAL_CONFIG.format(wide="3"), 30)
            await _wait_until(lambda: "not applied yet, keeping the previous one" in caplog.text)
            assert source.current is first
            upstream, _ = _serve_models(retriever, port)  # back: applied without a restart
            await _wait_until(lambda: source.current is not first)
            wide = next(a for a in source.current.assign("u1") if a.stage == "retrieval")
            assert {wide.payload.model_version} <= {"1", "3"}
    finally:
        upstream.stop(0)


async def test_an_unreachable_retrieval_service_at_start_is_a_warning_not_a_failure(
    repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from analytics.kafka.broker import free_port
    from ranker_server.app import watched_router

    config = tmp_path / "experiments.yaml"
    _write(config, RETRIEVAL_CONFIG.format(wide="2"), 0)
    settings = make_settings(repository, experiments=config, retrieval=f"127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING), watched_router(settings) as source:
        assert source.current.experiment_keys == ("ret-exp",)
    assert "retrieval model graph/2 accepted unchecked" in caplog.text


async def _ranker_with(repository: Path, retriever: FakeRetriever, port: int = 0, **settings: object):
    upstream, port = await _start_fake(retriever, port)
    client = RetrievalClient(f"127.0.0.1:{port}")
    server = RankerServer(
        make_settings(repository, retrieval_probe_interval_s=0.1, **settings), MutableSource(FakeRouter()), None,
        client,
    )  # fmt: skip
    ranker_port = await server.start()
    return upstream, port, client, server, ranker_port


async def _start_fake(retriever: FakeRetriever, port: int = 0) -> tuple[aio.Server, int]:
    upstream = aio.server()
    retrieval_pb2_grpc.add_RetrieverServicer_to_server(retriever, upstream)
    port = upstream.add_insecure_port(f"127.0.0.1:{port}")
    await upstream.start()
    return upstream, port


async def test_retrieve_k_is_checked_and_clamped_to_what_retrieval_accepts(repository: Path) -> None:
    retriever = FakeRetriever(max_k=50)
    upstream, port, client, server, ranker_port = await _ranker_with(
        repository, retriever, max_candidates=300
    )
    try:
        await _wait_until(lambda: client.max_k == 50)
        async with aio.insecure_channel(f"127.0.0.1:{ranker_port}") as channel:
            stub = ranking_pb2_grpc.RankerStub(channel)
            response = await stub.Rank(ranking_pb2.RankRequest(user_id="out-1", retrieve_k=200), timeout=10)
            assert (
                retriever.requests[-1].k == 50 and len(response.candidate_ids) == 50
            )  # clamped, not refused
            for k in (301, 2**32 - 1):
                with pytest.raises(aio.AioRpcError) as info:
                    await stub.Rank(ranking_pb2.RankRequest(user_id="out-1", retrieve_k=k), timeout=10)
                assert code_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
                assert info.value.details() == "retrieve_k: must be at most 300 (0: the server's default)"
            with pytest.raises(aio.AioRpcError) as info:
                await stub.Rank(ranking_pb2.RankRequest(user_id="unknown-1"), timeout=10)
            assert (
                code_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
            )  # retrieval's verdict, not retryable
            assert info.value.details().startswith(
                "candidate_ids: is empty and the retrieval service refused"
            )
            assert str(port) not in info.value.details()
    finally:
        await server.stop(1)
        await client.close()
        await upstream.stop(0)


async def test_health_of_the_retrieval_path_follows_retrieval_and_the_ranker_recovers(
    repository: Path,
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from prometheus_client import REGISTRY

    from ranker_server.server import RETRIEVAL_PATH

    retriever = FakeRetriever()
    upstream, port, client, server, ranker_port = await _ranker_with(repository, retriever)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        async with aio.insecure_channel(f"127.0.0.1:{ranker_port}") as channel:
            stub = ranking_pb2_grpc.RankerStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def status(service: str) -> int:
                return (await health.Check(health_pb2.HealthCheckRequest(service=service))).status

            without = ranking_pb2.RankRequest(user_id="out-1", top_k=3)
            with_candidates = ranking_pb2.RankRequest(user_id="out-1", candidate_ids=[1000, 1001])
            assert len((await stub.Rank(without, timeout=10)).candidate_ids) == 3
            assert await status(RETRIEVAL_PATH) == serving

            await upstream.stop(0)  # retrieval killed
            with pytest.raises(aio.AioRpcError) as info:
                await stub.Rank(without, timeout=10)
            assert code_of(info.value) == grpc.StatusCode.UNAVAILABLE and "retrieval" in info.value.details()
            assert "127.0.0.1" not in info.value.details() and str(port) not in info.value.details()
            assert len((await stub.Rank(with_candidates, timeout=10)).candidate_ids) == 2  # still served
            for _ in range(100):
                if await status(RETRIEVAL_PATH) == not_serving:
                    break
                await asyncio.sleep(0.05)
            up = {"target": f"127.0.0.1:{port}"}
            assert (
                await status(RETRIEVAL_PATH) == not_serving
                and REGISTRY.get_sample_value("mtrank_retrieval_up", up) == 0
            )
            assert await status("") == serving and await status("mtrank.v1.Ranker") == serving

            upstream, _ = await _start_fake(retriever, port)  # back on the same port: no ranker restart
            for _ in range(200):
                try:
                    if len((await stub.Rank(without, timeout=10)).candidate_ids) == 3:
                        break
                except aio.AioRpcError:
                    await asyncio.sleep(0.05)
            assert len((await stub.Rank(without, timeout=10)).candidate_ids) == 3
            await _wait_until(lambda: REGISTRY.get_sample_value("mtrank_retrieval_up", up) == 1)
            assert await status(RETRIEVAL_PATH) == serving
    finally:
        await server.stop(1)
        await client.close()
        await upstream.stop(0)
    assert REGISTRY.get_sample_value("mtrank_retrieval_up", up) is None  # no probe, no value


async def test_a_ranker_without_retrieval_exports_no_retrieval_up(repository: Path) -> None:
    """It exported ``mtrank_retrieval_up 0``: retrieval down, to the alert and the dashboard, for a ranker
    that never dials it."""
    from prometheus_client import REGISTRY

    server = RankerServer(make_settings(repository), MutableSource(FakeRouter()), None)
    await server.start()
    try:
        exported = [s for f in REGISTRY.collect() if f.name == "mtrank_retrieval_up" for s in f.samples]
    finally:
        await server.stop(0)
    assert exported == []
