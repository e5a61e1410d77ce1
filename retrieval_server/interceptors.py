"""One place that turns exceptions into gRPC status codes (after KServe's ExceptionToStatusInterceptor)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from grpc_serving.call_counting import CallCounter
from retrieval_server.errors import InvalidInput, ModelNotFound, ModelNotReady
from retrieval_server.metrics import RetrievalMetrics

logger = logging.getLogger(__name__)

STATUS = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelNotReady, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message of an exception (INTERNAL hides unexpected details)."""
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


class ExceptionToStatusInterceptor(aio.ServerInterceptor):
    """Wraps unary-unary handlers: known errors -> their code, anything else -> INTERNAL (logged).

    It also parses the request itself: bytes that are no valid message get INVALID_ARGUMENT naming ``request``
    (gRPC would answer UNKNOWN and log a traceback for every such call).
    """

    def __init__(self, metrics: RetrievalMetrics) -> None:
        self._calls = CallCounter(metrics.requests)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or "Retriever" not in handler_call_details.method:
            return handler
        inner = handler.unary_unary
        deserialize = handler.request_deserializer

        async def guarded(raw: Any, context: aio.ServicerContext) -> Any:
            try:
                try:
                    request = deserialize(raw) if deserialize is not None else raw
                except DecodeError:
                    raise InvalidInput("request", "cannot be parsed as the method's request message") from None
                return await inner(request, context)
            except Exception as exc:  # noqa: BLE001 (this is the one place that maps them)
                code, message = status_for(exc)
                if code == grpc.StatusCode.INTERNAL:
                    logger.exception("unexpected error in %s", handler_call_details.method)
                await context.abort(code, message)

        # retrieval_requests counts Retrieve calls: the ranker's ListModels probes were counted as OK requests
        retrieve = handler_call_details.method.endswith("/Retrieve")
        counted = self._calls.around(guarded) if retrieve else guarded
        return grpc.unary_unary_rpc_method_handler(counted, response_serializer=handler.response_serializer)
