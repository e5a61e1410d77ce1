"""Server interceptors: the single place where exceptions become gRPC status codes (bearer-token auth comes
from ``grpc_serving``, shared by every server)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from grpc_serving import AioBearerTokenInterceptor as BearerTokenInterceptor
from grpc_serving.call_counting import CallCounter
from proto import inference_pb2, ranking_pb2
from ranker_server import errors
from ranker_server.metrics import REQUESTS
from ranker_server.traffic import SequentialTraffic

__all__ = ["BearerTokenInterceptor", "ExceptionToStatusInterceptor", "status_for"]

logger = logging.getLogger(__name__)

_CODES: tuple[tuple[type[errors.RankerError], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.UpstreamError, grpc.StatusCode.UNAVAILABLE),
    (errors.QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and the message the client sees for ``exc``; unexpected errors stay generic."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, exc.reason
    return grpc.StatusCode.INTERNAL, "internal error"


COUNTED_METHODS = {
    f"/{service.full_name}/{name}": name
    for service, name in (
        (ranking_pb2.DESCRIPTOR.services_by_name["Ranker"], "Rank"),
        (inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], "ModelInfer"),
    )
}
"""gRPC method path -> its ``method`` label in ``mtrank_requests_total``: the calls that are requests (the
health, readiness and metadata probes are not)."""

_CALLS = {path: CallCounter(REQUESTS, name) for path, name in COUNTED_METHODS.items()}


def _wrap_unary(
    handler: grpc.RpcMethodHandler,
    behavior: Callable[[Any, aio.ServicerContext], Awaitable[Any]],
    deserializer: Callable[[bytes], Any] | None,
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=deserializer, response_serializer=handler.response_serializer
    )


class ExceptionToStatusInterceptor(aio.ServerInterceptor):
    """Maps ``RankerError`` subclasses to status codes (after KServe's interceptor of the same name) and
    counts each Rank and ModelInfer call once by the code it ends with (``mtrank_requests_total``), telling
    ``traffic`` (the server's, read by its ONNX Runtime runs) when each begins and ends. It must be
    the server's first interceptor: the calls an interceptor before it refuses (the token's UNAUTHENTICATED)
    never reach it."""

    def __init__(self, traffic: SequentialTraffic | None = None) -> None:
        self._traffic = traffic

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        deserialize = handler.request_deserializer
        method = handler_call_details.method

        async def behavior(raw: Any, context: aio.ServicerContext) -> Any:
            try:
                # Parsing happens here, not in grpc, so that bytes that are no valid message get
                # INVALID_ARGUMENT (grpc itself would answer INTERNAL).
                try:
                    request = deserialize(raw) if deserialize is not None else raw
                except DecodeError as exc:
                    raise errors.InvalidInput("request", f"cannot be parsed: {exc}") from None
                return await inner(request, context)
            except errors.RankerError as exc:
                code, message = status_for(exc)
                logger.debug("%s -> %s: %s", method, code.name, message)
            except aio.AbortError:
                raise
            except Exception:
                logger.exception("%s failed", method)
                code, message = grpc.StatusCode.INTERNAL, "internal error"
            await context.abort(code, message)

        calls = _CALLS.get(method)
        if calls is None:
            return _wrap_unary(handler, behavior, None)
        counted = calls.around(behavior)
        traffic = self._traffic
        if traffic is None:
            return _wrap_unary(handler, counted, None)

        async def tracked(request: Any, context: aio.ServicerContext) -> Any:
            traffic.begin(time.perf_counter())
            try:
                return await counted(request, context)
            finally:
                traffic.end(time.perf_counter())

        return _wrap_unary(handler, tracked, None)
