"""The Prometheus ``/metrics`` endpoint of the analytics processes (the consumer and the outcome server)."""

from __future__ import annotations

from prometheus_client import start_http_server

from analytics import AnalyticsError


class MetricsPortError(AnalyticsError):
    """``--metrics-port`` cannot be served: out of range, or nothing can listen there."""


def serve_metrics(port: int, host: str) -> int:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the bound port (``port`` 0: any).

    Call it before anything slow starts (Kafka's bootstrap wait, a journal), so a port in use fails at once.

    Raises:
        MetricsPortError: naming ``--metrics-port``.
    """
    if not 0 <= port <= 65535:
        raise MetricsPortError(f"--metrics-port must be in 0..65535, got {port}")
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as exc:
        raise MetricsPortError(f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return int(server.server_port)
