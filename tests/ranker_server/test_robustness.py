"""Deadlines, back-pressure, graceful shutdown, and a fuzz test of malformed requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import common_pb2, limits, ranking_pb2, ranking_pb2_grpc
from ranker_server.config import BatchingSettings
from ranker_server.exposure import MemorySink
from ranker_server.inference import ModelInput
from ranker_server.server import RankerServer
from tests.ranker_server.conftest import FakeRouter, MutableSource, Running, code_of, make_settings

pytestmark = pytest.mark.integration


def slow_down(server: RankerServer, seconds: float) -> None:
    """Make every ONNX Runtime call of tiny/1 take at least ``seconds`` (set before its first batch)."""
    model = server.repository.snapshot.models[("tiny", "1")]
    for runner in (model.runner, model.factored):  # rows given in full, and Rank's table candidates
        assert runner is not None
        infer = runner.infer

        async def slow(inputs: ModelInput, *args: object, infer=infer) -> np.ndarray:
            await asyncio.sleep(seconds)
            return await infer(inputs, *args)

        runner.infer = slow  # type: ignore[method-assign]


def rank(user: str = "out-1", n: int = 20) -> ranking_pb2.RankRequest:
    return ranking_pb2.RankRequest(user_id=user, candidate_ids=list(range(1000, 1000 + n)))


async def test_deadline_is_honoured(running: Running) -> None:
    slow_down(running.server, 0.3)
    started = time.perf_counter()
    with pytest.raises(aio.AioRpcError) as info:
        await running.stub.Rank(rank(), timeout=0.1)
    assert code_of(info.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - started < 0.3
    assert (await running.stub.Rank(rank(), timeout=5)).candidate_ids  # still serving


async def test_default_deadline_applies_when_the_client_sets_none(repository: Path) -> None:
    server = RankerServer(make_settings(repository, default_timeout_s=0.1), MutableSource(FakeRouter()), None)
    port = await server.start()
    slow_down(server, 0.4)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(aio.AioRpcError) as info:
            await ranking_pb2_grpc.RankerStub(channel).Rank(rank())
    assert code_of(info.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    await server.stop(1)


async def test_full_queue_answers_resource_exhausted(repository: Path) -> None:
    batching = BatchingSettings(max_batch_rows=20, max_delay_ms=0, max_queue_rows=60)
    server = RankerServer(make_settings(repository, batching=batching), MutableSource(FakeRouter()), None)
    port = await server.start()
    slow_down(server, 0.2)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ranking_pb2_grpc.RankerStub(channel)
        results = await asyncio.gather(
            *(stub.Rank(rank(f"out-{i}"), timeout=10) for i in range(12)), return_exceptions=True
        )
    codes = [code_of(r) for r in results if isinstance(r, BaseException)]
    assert codes and set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert len(codes) < len(results), "requests that fit the queue are served"
    await server.stop(1)


async def test_graceful_shutdown_drains_in_flight_and_reports_not_serving(repository: Path) -> None:
    server = RankerServer(
        make_settings(repository, grace_s=5, not_serving_delay_s=0.3),
        MutableSource(FakeRouter()),
        MemorySink(),
    )
    port = await server.start()
    slow_down(server, 0.3)
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    stub = ranking_pb2_grpc.RankerStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    in_flight = [asyncio.ensure_future(stub.Rank(rank(f"out-{i}"), timeout=10)) for i in range(4)]
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.05)
    status = (await health.Check(health_pb2.HealthCheckRequest(service="mtrank.v1.Ranker"))).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    responses = await asyncio.gather(*in_flight)
    assert all(len(r.candidate_ids) == 20 for r in responses)
    await stopping
    with pytest.raises(aio.AioRpcError) as info:
        await stub.Rank(rank(), timeout=1)
    assert code_of(info.value) == grpc.StatusCode.UNAVAILABLE
    await channel.close()


HUGE = "x" * 1_100_000  # 1.1 MB: gRPC admits it, no Kafka record holds an exposure carrying it


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"user_id": HUGE}, "user_id"),
        ({"request_id": HUGE}, "request_id"),
        ({"attributes": {"country": HUGE}}, "attributes"),
        ({"attributes": {HUGE: "NL"}}, "attributes"),
        ({"attributes": {f"k{i}": "v" for i in range(limits.MAX_ATTRIBUTES + 1)}}, "attributes"),
        ({"model": common_pb2.ModelRef(name=HUGE, version="1")}, "model.name"),
    ],
    ids=["user_id", "request_id", "attribute-value", "attribute-key", "attribute-count", "model-name"],
)
async def test_oversized_string_fields_are_invalid_and_never_echoed(
    running: Running, request_fields: dict, field: str
) -> None:
    request = ranking_pb2.RankRequest(**{"user_id": "u-1", "candidate_ids": [1000, 1001], **request_fields})
    with pytest.raises(aio.AioRpcError) as info:
        await running.stub.Rank(request, timeout=10)
    assert code_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: ") and len(info.value.details()) < 120
    await asyncio.sleep(0.05)
    assert not running.sink.exposures, "nothing of a rejected request reaches the exposure log"


# ---------------------------------------------------------------------------- fuzz


@pytest.fixture(scope="module")
def threaded_server(repository: Path) -> Iterator[str]:
    """A server on its own event loop thread, so hypothesis can drive it with a blocking client."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, object] = {}

    async def main() -> None:
        server = RankerServer(
            make_settings(repository, max_candidates=300), MutableSource(FakeRouter()), MemorySink()
        )
        holder["port"] = await server.start()
        holder["stop"] = asyncio.Event()
        started.set()
        await holder["stop"].wait()  # type: ignore[union-attr]
        await server.stop(1)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(60)
    yield f"127.0.0.1:{holder['port']}"
    loop.call_soon_threadsafe(holder["stop"].set)  # type: ignore[union-attr]
    thread.join(10)


floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
requests = st.builds(
    ranking_pb2.RankRequest,
    request_id=st.text(max_size=8),
    user_id=st.one_of(st.just(""), st.text(max_size=12)),
    attributes=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    user_sparse=st.lists(int64, max_size=4),
    user_dense=st.lists(floats, max_size=3),
    candidate_ids=st.one_of(
        st.lists(int64, max_size=40),
        st.lists(st.integers(990, 1010), max_size=30),
        st.lists(st.integers(990, 1400), max_size=400, unique=True),
    ),
    candidate_sparse=st.lists(int64, max_size=6),
    candidate_dense=st.lists(floats, max_size=6),
    top_k=st.integers(0, 2**32 - 1),
    retrieve_k=st.integers(0, 2**32 - 1),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests)
def test_fuzzed_requests_get_a_proper_status_and_the_server_stays_up(threaded_server: str, request) -> None:
    with grpc.insecure_channel(threaded_server) as channel:
        stub = ranking_pb2_grpc.RankerStub(channel)
        try:
            response = stub.Rank(request, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
            assert exc.details().split(":")[0] in {
                "user_id", "candidate_ids", "user_sparse", "user_dense", "candidate_sparse", "candidate_dense",
                "retrieve_k",
            }  # fmt: skip
        else:
            n = len(request.candidate_ids)
            assert len(response.candidate_ids) == (min(n, request.top_k) if request.top_k else n)
            assert np.isfinite(np.array(response.merged_scores)).all()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=200))
def test_fuzzed_bytes_are_parsed_or_rejected_as_invalid(threaded_server: str, payload: bytes) -> None:
    with grpc.insecure_channel(threaded_server) as channel:
        call = channel.unary_unary(
            "/mtrank.v1.Ranker/Rank", request_serializer=None, response_deserializer=None
        )
        try:
            call(payload, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_only_answered_requests_are_logged_as_exposures(running: Running) -> None:
    """An exposure says the user saw the variant: none for a request that failed after its assignment."""
    assert running.source.current.assign("user-4")[0].payload.model_version == "1"  # the slowed model
    slow_down(running.server, 0.3)
    with pytest.raises(aio.AioRpcError) as info:
        await running.stub.Rank(rank("user-4"), timeout=0.1)
    assert code_of(info.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(aio.AioRpcError) as info:  # no candidates, and no retrieval service to ask
        await running.stub.Rank(ranking_pb2.RankRequest(user_id="user-4", request_id="r-0"), timeout=5)
    assert code_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    served = await running.stub.Rank(rank("user-4"), timeout=5)
    await asyncio.sleep(0.5)  # the slowed request's scoring has finished too; exposures are handed over
    [exposure] = running.sink.exposures
    assert (exposure.request_id, exposure.user_id) == (served.request_id, "user-4")
    [assignment] = served.assignments
    assert (exposure.experiment_key, exposure.variant_key, exposure.variation_id) == (
        assignment.experiment_key,
        assignment.variant_key,
        assignment.variation_id,
    )
    assert list(exposure.item_ids) == list(served.candidate_ids)
