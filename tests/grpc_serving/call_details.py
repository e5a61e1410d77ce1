"""What a server interceptor is handed for a call, built without a network (tests of interceptors)."""

from __future__ import annotations

import grpc


def call_details(method: str) -> grpc.HandlerCallDetails:
    """The ``HandlerCallDetails`` of a call to ``method`` (``/package.Service/Method``) without metadata."""

    class Details(grpc.HandlerCallDetails):
        def __init__(self) -> None:
            self.method = method
            self.invocation_metadata = ()

    return Details()
