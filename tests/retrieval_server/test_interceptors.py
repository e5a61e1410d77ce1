"""The exception-mapping interceptor counts every Retrieve call by how it ended."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from retrieval_server.interceptors import ExceptionToStatusInterceptor
from retrieval_server.metrics import RetrievalMetrics
from tests.grpc_serving.call_details import call_details


def test_a_cancelled_retrieve_is_counted_and_stays_cancelled() -> None:
    """A call the client cancelled (or whose deadline passed) raised CancelledError past the interceptor's
    ``except Exception``: it was in no metric, so the requests-by-code panel never showed cancellations."""
    metrics = RetrievalMetrics()

    async def cancelled(request: Any, context: Any) -> Any:
        raise asyncio.CancelledError

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(cancelled)

    async def call() -> None:
        interceptor = ExceptionToStatusInterceptor(metrics)
        handler = await interceptor.intercept_service(continuation, call_details("/mtrank.v1.Retriever/Retrieve"))
        await handler.unary_unary(b"", None)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call())
    assert metrics.registry.get_sample_value("retrieval_requests_total", {"code": "CANCELLED"}) == 1
