"""The server object: builds the pieces from settings, starts grpc.aio, stops gracefully.

Lifecycle after the grpc examples: ``start`` binds and serves (health SERVING per service); ``stop`` first
sets every service NOT_SERVING, then lets in-flight requests finish within the grace period, then drains the
model repository and the exposure buffer.

Health while retrieval is down: the server and ``mtrank.v1.Ranker`` stay SERVING, because requests that bring
their candidates are still served (every replica shares the retrieval backend, so taking replicas out of
rotation would turn a partial outage into a full one); ``mtrank.v1.Ranker/retrieval``, the path of requests
without candidates, turns NOT_SERVING (and ``mtrank_retrieval_up`` 0) until retrieval answers again. Those
requests meanwhile get UNAVAILABLE naming retrieval; the channel reconnects by itself, no restart needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpc_serving import SERVER_OPTIONS, bind
from proto import inference_pb2, inference_pb2_grpc, ranking_pb2, ranking_pb2_grpc
from ranker_server.config import ServerSettings
from ranker_server.dataplane import CandidateSource, RankDataPlane
from ranker_server.exposure import ExposureLogger, ExposureSink
from ranker_server.interceptors import BearerTokenInterceptor, ExceptionToStatusInterceptor
from ranker_server.model_repository import LoadedModel, ModelKey, ModelRepository
from ranker_server.open_inference import InferenceDataPlane
from ranker_server.open_inference_servicer import OpenInferenceServicer
from ranker_server.routing import RouterSource
from ranker_server.servicer import RankerServicer
from ranker_server.traffic import SequentialTraffic

logger = logging.getLogger(__name__)

RANKER_SERVICE = ranking_pb2.DESCRIPTOR.services_by_name["Ranker"].full_name
INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
RETRIEVAL_PATH = f"{RANKER_SERVICE}/retrieval"
"""Health service name of the retrieval-dependent path (requests without candidates)."""


def loaded_models_text(models: Mapping[ModelKey, LoadedModel]) -> str:
    """The loaded versions by the execution provider each got: ``a/1, b/2 on CPUExecutionProvider``."""
    by_provider: dict[str, list[str]] = {}
    for (name, version), model in sorted(models.items()):
        by_provider.setdefault(model.runner.provider, []).append(f"{name}/{version}")
    parts = [f"{', '.join(keys)} on {provider}" for provider, keys in by_provider.items()]
    return "; ".join(parts) or "no models"


class RankerServer:
    """One grpc.aio server process: Ranker, the Open Inference Protocol (unless turned off), health and
reflection over one model repository."""

    def __init__(
        self,
        settings: ServerSettings,
        router_source: RouterSource,
        exposure_sink: ExposureSink | None = None,
        retrieval: CandidateSource | None = None,
        auth_token: str | None = None,
        tls: grpc.ServerCredentials | None = None,
    ) -> None:
        self.settings = settings
        self._router_source = router_source
        self._exposure_sink = exposure_sink
        self._retrieval = retrieval
        self._auth_token = auth_token
        self._tls = tls
        self._executor = ThreadPoolExecutor(
            max_workers=settings.runtime.inference_threads, thread_name_prefix="onnxruntime"
        )
        self._server: aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []
        self.repository: ModelRepository | None = None
        self.exposures: ExposureLogger | None = None
        self.inference: InferenceDataPlane | None = None
        self.port = 0

    async def start(self) -> int:
        """Load the models, bind, and serve; returns the bound port.

        Raises:
            PackageError: when a model the router names cannot be loaded.
        """
        settings = self.settings
        traffic = SequentialTraffic() if settings.runtime.lone_runs == "loop" else None
        self.repository = ModelRepository(
            settings.repository,
            self._router_source,
            settings.runtime,
            settings.batching,
            self._executor,
            traffic,
        )
        await self.repository.start()
        if self._exposure_sink is not None:
            self.exposures = ExposureLogger(self._exposure_sink, settings.exposure_buffer)
            self.exposures.start()
        dataplane = RankDataPlane(
            self.repository,
            self.exposures,
            self._retrieval,
            settings.max_candidates,
            settings.retrieve_k,
            settings.retrieval_timeout_s,
        )
        # The counting interceptor is the outermost, so that the calls the token interceptor refuses pass
        # through it and count as UNAUTHENTICATED in mtrank_requests_total (they were in no error ratio).
        interceptors: list[aio.ServerInterceptor] = [ExceptionToStatusInterceptor(traffic)]
        if self._auth_token:
            interceptors.append(BearerTokenInterceptor(self._auth_token))
        # SO_REUSEPORT lets ``--workers N`` processes bind the same port; the kernel spreads connections.
        server = aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 1), *SERVER_OPTIONS])
        ranking_pb2_grpc.add_RankerServicer_to_server(
            RankerServicer(dataplane, settings.default_timeout_s), server
        )
        services = [RANKER_SERVICE]
        if settings.open_inference:
            self.inference = InferenceDataPlane(self.repository, settings.max_candidates)
            inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                OpenInferenceServicer(self.inference, settings.default_timeout_s), server
            )
            services.append(INFERENCE_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        self.port = bind(server, f"{settings.host}:{settings.port}", self._tls)
        await server.start()
        self._server = server
        for service in ("", *services):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.repository.poll(settings.poll_interval_s)))
        if self._retrieval is not None:
            self._tasks.append(loop.create_task(self._watch_retrieval(self._retrieval)))
        logger.info(
            "ranker serving on %s:%d (%s%s): %s",
            settings.host,
            self.port,
            "TLS" if self._tls is not None else "plaintext",
            ", bearer token required" if self._auth_token else "",
            loaded_models_text(self.repository.snapshot.models),
        )
        return self.port

    async def _watch_retrieval(self, retrieval: CandidateSource) -> None:
        """Keep the health of ``RETRIEVAL_PATH`` in line with retrieval's answers (each probe also sets
        ``mtrank_retrieval_up``)."""
        interval = self.settings.retrieval_probe_interval_s
        up: bool | None = None
        while True:
            answered = await retrieval.probe(timeout_s=min(interval, self.settings.retrieval_timeout_s))
            if answered != up:
                up = answered
                status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
                await self._health.set(RETRIEVAL_PATH, status)
                if up:
                    logger.info("retrieval answers: requests without candidates are served")
                else:
                    logger.warning("retrieval does not answer: requests without candidates get UNAVAILABLE")
            await asyncio.sleep(interval)

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING first, then drain in-flight requests within ``grace_s``, then release everything."""
        grace = self.settings.grace_s if grace_s is None else grace_s
        await self._health.enter_graceful_shutdown()
        if self.inference is not None:
            self.inference.stopping = True
        if self._server is not None:
            await asyncio.sleep(self.settings.not_serving_delay_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(grace)
        if self.repository is not None:
            await self.repository.close()
        if self.exposures is not None:
            await self.exposures.close()
        self._executor.shutdown(wait=True)
        logger.info("ranker stopped")
