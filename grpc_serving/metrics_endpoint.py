"""The Prometheus ``/metrics`` endpoint of every server and of the analytics consumer, with one convention
for ``--metrics-port``: a port, 0 for any free one, unset for none (off)."""

from __future__ import annotations

import argparse
import logging
from typing import overload
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from grpc_serving import BindError
from grpc_serving.flag_types import PORT


class MetricsPortError(BindError):
    """``--metrics-port`` cannot be served: out of range, or nothing can listen there."""


def add_metrics_arguments(parser: argparse.ArgumentParser, serves: str) -> None:
    """``--metrics-port`` (off by default) and ``--metrics-host``; ``serves`` says what /metrics holds."""
    parser.add_argument(
        "--metrics-port",
        type=PORT,
        default=None,
        help=f"serve Prometheus /metrics here ({serves}); 0 = any free port; unset: off",
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="interface for /metrics (0.0.0.0: all)")


@overload
def serve_metrics(port: int, host: str, registry: CollectorRegistry = ...) -> WSGIServer: ...
@overload
def serve_metrics(port: int | None, host: str, registry: CollectorRegistry = ...) -> WSGIServer | None: ...
def serve_metrics(port: int | None, host: str, registry: CollectorRegistry = REGISTRY) -> WSGIServer | None:
    """Serve ``registry`` as ``/metrics`` on ``host:port`` from a daemon thread (``port`` 0: any free one,
    None: nothing is served); returns the HTTP server (its ``server_port`` is the bound port).

    Call it before anything slow starts (Kafka's bootstrap wait, loading models), so a port in use fails at once.

    Raises:
        MetricsPortError: naming ``--metrics-port``.
    """
    if port is None:
        return None
    if not 0 <= port <= 65535:  # a worker's PORT+i can pass the end
        raise MetricsPortError(f"--metrics-port must be in 0..65535, got {port}")
    try:
        server, _ = start_http_server(port, addr=host.strip("[]"), registry=registry)
    except OSError as exc:
        raise MetricsPortError(
            f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return server


def serve_metrics_from_args(args: argparse.Namespace, logger: logging.Logger) -> None:
    """``serve_metrics`` for the flags ``add_metrics_arguments`` defined; logs where it listens.

    Raises:
        MetricsPortError: see ``serve_metrics``.
    """
    server = serve_metrics(args.metrics_port, args.metrics_host)
    if server is not None:
        logger.info("metrics on %s:%d", args.metrics_host, server.server_port)
