"""grpc.aio client of the retrieval service, shaped as the data plane's ``CandidateSource``."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import grpc
import numpy as np
from grpc import aio

from experiment_router.errors import ModelCheckUnavailable
from grpc_serving import ClientSecurity
from proto import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from ranker_server import metrics
from ranker_server.dataplane import Retrieved
from ranker_server.errors import DeadlineExceeded, InvalidInput, RankerError, UpstreamError

logger = logging.getLogger(__name__)


# Reconnect quickly once retrieval is back (gRPC's default back-off grows to two minutes).
_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000))


class RetrievalClient:
    """Calls ``Retriever/Retrieve`` with the retrieval-layer variant's model; one channel per process.

    Errors reach the Rank caller naming retrieval but never its address (logged here instead): retrieval's
    INVALID_ARGUMENT is the request's fault (INVALID_ARGUMENT), its timeout DEADLINE_EXCEEDED, anything else
    UNAVAILABLE. ``probe`` (the server runs it periodically) asks ``ListModels``: whether retrieval answers, and
    the largest k it accepts (``max_k``).
    """

    def __init__(self, target: str, security: ClientSecurity | None = None) -> None:
        self._target = target
        security = security or ClientSecurity()
        credentials = security.credentials
        self._channel = (
            aio.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
            if credentials
            else aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        )
        self._metadata = tuple(security.metadata)
        self._stub = retrieval_pb2_grpc.RetrieverStub(self._channel)
        self.max_k: int | None = None  # from the last successful probe
        self._last_logged: dict[grpc.StatusCode, float] = {}

    async def retrieve(
        self,
        request_id: str,
        user_id: str,
        k: int,
        model: tuple[str, str] | None,
        attributes: Mapping[str, str],
        timeout_s: float | None,
    ) -> Retrieved:
        request = retrieval_pb2.RetrieveRequest(
            request_id=request_id, user_id=user_id, k=k, attributes=dict(attributes)
        )
        if model is not None:
            request.model.CopyFrom(common_pb2.ModelRef(name=model[0], version=model[1]))
        try:
            response = await self._stub.Retrieve(request, timeout=timeout_s, metadata=self._metadata)
        except aio.AioRpcError as exc:
            raise self._error(exc) from None
        return Retrieved(
            candidate_ids=np.asarray(response.candidate_ids, np.int64),
            model=(response.model.name, response.model.version),
        )

    def _error(self, exc: aio.AioRpcError) -> RankerError:
        code = exc.code()
        now = time.monotonic()
        if now - self._last_logged.get(code, -60.0) >= 10.0:  # an outage must not log once per request
            self._last_logged[code] = now
            logger.warning("retrieval at %s: %s: %s", self._target, code.name, exc.details())
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded("the retrieval service timed out")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidInput("candidate_ids", f"is empty and the retrieval service refused the request: {exc.details()}")
        if code == grpc.StatusCode.NOT_FOUND:
            return UpstreamError(f"the retrieval service does not serve the model: {exc.details()}")
        return UpstreamError(f"the retrieval service is unavailable ({code.name}); send candidate_ids or retry")

    async def probe(self, timeout_s: float) -> bool:
        """Ask ``ListModels``; True when retrieval answered (``max_k`` is then up to date). The answer sets
        ``mtrank_retrieval_up{target}``: a ranker without ``--retrieval`` has no client, hence no such series
        (a constant 0 there read as retrieval down)."""
        answered = await self._list_models(timeout_s)
        metrics.RETRIEVAL_UP.labels(self._target).set(int(answered))
        return answered

    async def _list_models(self, timeout_s: float) -> bool:
        try:
            response = await self._stub.ListModels(
                retrieval_pb2.ListModelsRequest(), timeout=timeout_s, metadata=self._metadata
            )
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # an older retrieval server: up, limit unknown
                return True
            return False
        self.max_k = response.max_k or None
        return True

    async def close(self) -> None:
        """Close the channel; the probes stop, so does ``mtrank_retrieval_up`` (a stale 0 would alert)."""
        await self._channel.close()
        metrics.RETRIEVAL_UP.remove(self._target)


class RetrievalModelCheck:
    """``model_exists`` for retrieval-stage payloads: asks the retrieval service what it serves (``ListModels``).

    Runs on the config watcher's thread, so it uses its own blocking channel. One ``ListModels`` answer serves
    every payload of one config load (it is reused for ``cache_s``).

    Args:
        target: HOST:PORT of the retrieval service.
        security: TLS credentials and call metadata for it.
        strict: what an unreachable service means: False (the ranker's start, where the services may come up
            in any order) accepts the version unchecked with a warning; True (hot reloads) raises
            ``ModelCheckUnavailable``, so the config watcher keeps the previous config and retries.
    """

    def __init__(
        self, target: str, security: ClientSecurity | None = None, strict: bool = False, timeout_s: float = 2.0,
        cache_s: float = 1.0,
    ) -> None:  # fmt: skip
        security = security or ClientSecurity()
        self._target = target
        self._channel = (
            grpc.secure_channel(target, security.credentials) if security.credentials else grpc.insecure_channel(target)
        )
        self._stub = retrieval_pb2_grpc.RetrieverStub(self._channel)
        self._metadata = tuple(security.metadata)
        self.strict = strict
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._cached: tuple[float, frozenset[tuple[str, str]]] | None = None

    def served(self) -> frozenset[tuple[str, str]]:
        """The (name, version) pairs the retrieval service serves.

        Raises:
            grpc.RpcError: the service did not answer.
        """
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self._cache_s:
            response = self._stub.ListModels(
                retrieval_pb2.ListModelsRequest(), timeout=self._timeout_s, metadata=self._metadata
            )
            self._cached = (now, frozenset((m.name, m.version) for m in response.models))
        return self._cached[1]

    def __call__(self, name: str, version: str) -> bool:
        """True when the retrieval service serves ``name``/``version``.

        Raises:
            ModelCheckUnavailable: the service cannot be asked and ``strict`` is set.
        """
        try:
            served = self.served()
        except grpc.RpcError as exc:
            reason = f"cannot ask the retrieval service at {self._target} what it serves ({exc.code().name})"
            if self.strict and exc.code() != grpc.StatusCode.UNIMPLEMENTED:  # an older server cannot be asked
                raise ModelCheckUnavailable(reason) from None
            logger.warning("%s: retrieval model %s/%s accepted unchecked", reason, name, version)
            return True
        if (name, version) in served:
            return True
        logger.error(
            "retrieval model %s/%s is not served by the retrieval service at %s (it serves %s)",
            name, version, self._target, ", ".join(f"{n}/{v}" for n, v in sorted(served)) or "nothing",
        )  # fmt: skip
        return False

    def close(self) -> None:
        self._channel.close()
