"""Counting a server's gRPC calls once each, by the status code they end with, in its exception-mapping
interceptor: what dashboards and autoscalers read as requests/s and error ratio (``retrieval_requests_total``,
``mtrank_requests_total``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio
from prometheus_client import Counter

T = TypeVar("T")
UnaryBehavior = Callable[[Any, aio.ServicerContext], Awaitable[T]]
"""A unary-unary handler's behavior: (request, context) -> response."""


class CallCounter:
    """The calls of one method in ``counter``, whose last label is the status code's name and whose other
    labels are ``labels``; each code's child is resolved once (``labels()`` costs ~20 us a call). The OK series
    exists from the start: before the first call a requests/s query reads 0, not nothing."""

    def __init__(self, counter: Counter, *labels: str) -> None:
        self._counter = counter
        self._labels = labels
        self._children: dict[grpc.StatusCode, Counter] = {}
        self._child(grpc.StatusCode.OK)

    def _child(self, code: grpc.StatusCode) -> Counter:
        child = self._children.get(code)
        if child is None:
            child = self._children[code] = self._counter.labels(*self._labels, code.name)
        return child

    def inc(self, code: grpc.StatusCode) -> None:
        """Count one call that ended with ``code``."""
        self._child(code).inc()

    async def count(self, call: Awaitable[T], context: aio.ServicerContext) -> T:
        """Await a handler's ``call`` and count it by how it ended: the code its context holds (set by
        ``context.abort``; OK when none was set), CANCELLED when the client cancelled or its deadline passed
        (the task is cancelled, no status is sent), UNKNOWN for an exception gRPC answers that way."""
        try:
            response = await call
        except asyncio.CancelledError:
            self.inc(grpc.StatusCode.CANCELLED)
            raise
        except BaseException:
            self.inc(context.code() or grpc.StatusCode.UNKNOWN)
            raise
        self.inc(context.code() or grpc.StatusCode.OK)
        return response

    def around(self, behavior: UnaryBehavior[T]) -> UnaryBehavior[T]:
        """``behavior`` with each of its calls counted (see ``count``)."""

        async def counted(request: Any, context: aio.ServicerContext) -> T:
            return await self.count(behavior(request, context), context)

        return counted
