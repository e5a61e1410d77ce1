"""The exception-mapping interceptor counts each Rank and ModelInfer call once by how it ended."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from prometheus_client import REGISTRY

from proto import ranking_pb2, ranking_pb2_grpc
from ranker_server.app import running_server
from ranker_server.interceptors import ExceptionToStatusInterceptor
from tests.deploy.test_observability import SERVING_DASHBOARD, panel_target, promql_increase
from tests.grpc_serving.call_details import call_details
from tests.ranker_server.conftest import FakeRouter, MutableSource, code_of, make_settings
from tests.ranker_server.test_interleaved_rank import _calls as calls_between
from tests.ranker_server.test_interleaved_rank import _hpa_query, _scrape


def _calls(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("mtrank_requests_total", {"method": method, "code": code}) or 0.0


@pytest.mark.parametrize(
    ("path", "method"),
    [("/mtrank.v1.Ranker/Rank", "Rank"), ("/inference.GRPCInferenceService/ModelInfer", "ModelInfer")],
)
def test_a_cancelled_call_is_counted_once_and_stays_cancelled(path: str, method: str) -> None:
    """A call the client cancelled (or whose deadline passed) ends in CancelledError, no status is sent: it
    must still count, or requests/s drops exactly when clients give up."""

    async def cancelled(request: Any, context: Any) -> Any:
        raise asyncio.CancelledError

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(cancelled)

    async def call() -> None:
        handler = await ExceptionToStatusInterceptor().intercept_service(continuation, call_details(path))
        await handler.unary_unary(b"", None)

    before = _calls(method, "CANCELLED")
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call())
    assert _calls(method, "CANCELLED") - before == 1


@pytest.mark.integration
async def test_calls_refused_for_their_token_are_counted_unauthenticated(
    repository: Path, tmp_path: Path
) -> None:
    """The token interceptor ran before the counting one: calls it refused left ``mtrank_requests_total`` as
    it was, so the dashboard's Errors/s and error ratio read 0 for them. The HPA's requests per pod leaves
    them out: a refused call ranks nothing, and a client with a stale token must not scale the ranker out."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    dashboard = json.loads(SERVING_DASHBOARD.read_text())
    request = ranking_pb2.RankRequest(user_id="out-1", candidate_ids=[1000, 1001, 1002])
    settings = make_settings(repository, auth_token_file=token)
    async with running_server(settings, MutableSource(FakeRouter())) as server:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ranking_pb2_grpc.RankerStub(channel)
            before = _scrape()
            await stub.Rank(request, metadata=(("authorization", "Bearer s3cret-token"),))
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret-token"),)):
                with pytest.raises(aio.AioRpcError) as refused:
                    await stub.Rank(request, metadata=metadata)
                assert code_of(refused.value) == grpc.StatusCode.UNAUTHENTICATED
            # The server counts a refused call as the abort unwinds, after the status went out: the client
            # can hold its answer first (2 of 3 counted once in a full run). Wait for the count, briefly.
            for _ in range(100):
                after = _scrape()
                if calls_between(before, after, "Rank").get("UNAUTHENTICATED", 0) >= 3:
                    break
                await asyncio.sleep(0.01)
    assert calls_between(before, after, "Rank") == {"OK": 1, "UNAUTHENTICATED": 3}
    counted = {
        "Errors/s": promql_increase(panel_target(dashboard, "Errors/s"), before, after),
        "error ratio": promql_increase(panel_target(dashboard, "Errors/s by reason", "B"), before, after),
        "HPA requests per pod": promql_increase(_hpa_query(), before, after),
    }
    assert counted == {"Errors/s": 3, "error ratio": pytest.approx(3 / 4), "HPA requests per pod": 1}
