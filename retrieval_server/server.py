"""The retrieval server object: grpc.aio + health + reflection + metrics, graceful stop.

``stop`` first sets health to NOT_SERVING (so load balancers stop sending), then lets in-flight requests finish
within the grace period, then shuts the executor and the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpc_serving import SERVER_OPTIONS, AioBearerTokenInterceptor, ServerSecurity, bind
from grpc_serving.metrics_endpoint import MetricsPortError
from proto import retrieval_pb2, retrieval_pb2_grpc
from retrieval_server.dataplane import RetrievalDataPlane, RouterSource
from retrieval_server.interceptors import ExceptionToStatusInterceptor
from retrieval_server.metrics import RetrievalMetrics
from retrieval_server.model_repository import ModelRepository
from retrieval_server.servicer import RetrieverServicer

logger = logging.getLogger(__name__)

RETRIEVER_SERVICE = retrieval_pb2.DESCRIPTOR.services_by_name["Retriever"].full_name


class RetrievalServer:
    """One grpc.aio server over one model repository."""

    def __init__(self, repository: ModelRepository, host: str = "127.0.0.1", port: int = 0,
                 metrics_port: int | None = None, max_k: int = 1000, threads: int = 4,
                 poll_interval_s: float = 0.0, router_source: RouterSource | None = None,
                 exclude_neighbours: bool = False, security: ServerSecurity | None = None) -> None:
        self.repository = repository
        self.metrics = RetrievalMetrics()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="retrieval")
        self.dataplane = RetrievalDataPlane(repository, self.metrics, max_k=max_k, executor=self._executor,
                                            router_source=router_source, exclude_neighbours=exclude_neighbours)
        self._host = host
        self._address = f"{host}:{port}"
        self._metrics_port = metrics_port
        self._poll_interval_s = poll_interval_s
        self._security = security or ServerSecurity()
        self._health = health.aio.HealthServicer()
        self._server: aio.Server | None = None
        self._poller: asyncio.Task | None = None
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        """Bind, serve and mark every service SERVING."""
        self.metrics.publish_models(self.repository.loaded(), self.repository.default)
        # the counting interceptor first: calls the token interceptor refuses count as UNAUTHENTICATED
        interceptors: list[aio.ServerInterceptor] = [ExceptionToStatusInterceptor(self.metrics)]
        if self._security.token:
            interceptors.append(AioBearerTokenInterceptor(self._security.token))
        server = aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        retrieval_pb2_grpc.add_RetrieverServicer_to_server(RetrieverServicer(self.dataplane), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (RETRIEVER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        self.port = bind(server, self._address, self._security.credentials)
        await server.start()
        self._server = server
        for service in (RETRIEVER_SERVICE, ""):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self._metrics_port is not None:
            # Same interface as gRPC, so that --host 0.0.0.0 makes /metrics scrapable from other hosts too.
            try:
                self.metrics_port = self.metrics.serve(self._metrics_port, addr=self._host)
            except MetricsPortError:
                await server.stop(0)
                raise
        if self._poll_interval_s > 0:
            self._poller = asyncio.create_task(self._poll())
        logger.info(
            "retrieval server on %s:%d (%s%s; metrics %s), models %s",
            self._host,
            self.port,
            "TLS" if self._security.credentials is not None else "plaintext",
            ", bearer token required" if self._security.token else "",
            self.metrics_port or "off",
            ", ".join(f"{m.name}:{m.version} on {m.provider}" for m in self.repository.loaded()),
        )

    async def reload(self, name: str, version: str, default: bool = False) -> None:
        """Load or reload a version without blocking the event loop; swaps atomically when ready."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.repository.load, name, version, default)
        self.metrics.publish_models(self.repository.loaded(), self.repository.default)

    async def _poll(self) -> None:
        """Pick up rewritten packages (a new index from the batch job) every poll interval."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                changed = await loop.run_in_executor(self._executor, self.repository.refresh)
            except Exception:  # a dead poller would stop hot reload for good, and stop() would re-raise this
                logger.exception("model repository refresh failed")
                continue
            if changed:
                self.metrics.publish_models(self.repository.loaded(), self.repository.default)

    async def stop(self, grace_s: float = 5.0) -> None:
        """NOT_SERVING first, then drain in-flight requests within ``grace_s``."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        server, self._server = self._server, None
        if server is None:  # never started or already stopped
            return
        await self._health.enter_graceful_shutdown()
        await server.stop(grace_s)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
