"""The exception-mapping interceptor counts each Rank and ModelInfer call once by how it ended."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from ranker_server.interceptors import ExceptionToStatusInterceptor
from tests.grpc_serving.call_details import call_details


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
