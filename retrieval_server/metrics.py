"""Prometheus metrics of the retrieval server, on their own registry (one per server object).

The registry also serves experiment_router's config reload counter and config info: with ``--experiments`` the
process runs a ConfigWatcher, which counts into the default registry that this endpoint does not serve.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from experiment_router.reload import LIVE as ROUTER_CONFIG
from experiment_router.reload import RELOADS as ROUTER_CONFIG_RELOADS
from grpc_serving.metrics_endpoint import serve_metrics

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
K_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)


class RetrievalMetrics:
    """Latency, k, outcomes, index sizes and the loaded model versions (with their execution provider)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("retrieval_request_seconds", "Retrieve latency inside the server",
                                 ["model", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.k = Histogram("retrieval_k", "k asked for per request", buckets=K_BUCKETS, registry=self.registry)
        self.requests = Counter("retrieval_requests", "Retrieve calls by gRPC status code", ["code"],
                                registry=self.registry)
        self.on_the_fly = Counter("retrieval_unseen_users", "users embedded on the fly by the ONNX encoder",
                                  ["model", "version"], registry=self.registry)
        self.index_size = Gauge("retrieval_index_size", "items in the index", ["model", "version", "index"],
                                registry=self.registry)
        self.model_info = Gauge("retrieval_model_loaded", "1 for every loaded model version (2 = the default)",
                                ["model", "version", "provider"], registry=self.registry)
        for process_wide in (ROUTER_CONFIG, ROUTER_CONFIG_RELOADS):  # empty unless --experiments is given
            self.registry.register(process_wide)

    def publish_models(self, models: list, default: tuple[str, str] | None) -> None:
        """Reset the per-model gauges to what is loaded now (after a load, swap or unload)."""
        self.index_size.clear()
        self.model_info.clear()
        for m in models:
            self.index_size.labels(m.name, m.version, m.index.kind).set(m.index.size)
            self.model_info.labels(m.name, m.version, m.provider).set(2 if m.key == default else 1)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Expose /metrics over HTTP; returns the bound port (pass 0 for a free one).

        Raises:
            MetricsPortError: naming ``--metrics-port``.
        """
        self._http = serve_metrics(port, addr, self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        server = getattr(self, "_http", None)
        if server is not None:
            server.shutdown()
            server.server_close()
