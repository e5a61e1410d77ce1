"""Optional gRPC front door (``OutcomeReporter.ReportOutcomes``) for backends that do not talk to Kafka.

``python -m analytics.events.outcome_server --bootstrap HOST:PORT`` serves it with the standard health service
and reflection. The servicer is transport only: it validates, then hands the outcomes to an ``EventProducer``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from analytics.events.errors import JournalError
from analytics.events.messages import event_problem, event_time_problem, now_ms
from analytics.events.producer import OUTCOMES_TOPIC, EventProducer
from analytics.kafka.broker import DEFAULT_DATA_DIR
from analytics.kafka.checks import bootstrap_problem, topic_problem
from grpc_serving import (
    SERVER_OPTIONS,
    BearerTokenInterceptor,
    HelpFormatter,
    SecurityError,
    ServerSecurity,
    add_log_level_argument,
    add_server_arguments,
    address_problem,
    bind,
    configure_logging,
    server_security_from_args,
)
from grpc_serving.flag_types import NON_NEGATIVE
from grpc_serving.metrics_endpoint import MetricsPortError, add_metrics_arguments, serve_metrics_from_args
from proto import events_pb2, outcomes_pb2, outcomes_pb2_grpc

log = logging.getLogger("analytics.events.outcome_server")  # not __main__ under python -m
SERVICE_NAME = outcomes_pb2.DESCRIPTOR.services_by_name["OutcomeReporter"].full_name


def outcomes_problem(outcomes: Sequence[events_pb2.Outcome], now: int) -> str | None:
    """``outcomes[i].<field> <reason>`` for the first outcome that cannot be accepted, else None.

    Args:
        outcomes: the request's outcomes.
        now: the server's clock in milliseconds since the Unix epoch (event times are checked against it).
    """
    for i, outcome in enumerate(outcomes):
        problem = event_problem(outcome) or event_time_problem(outcome.event_time_ms, now)
        if problem is not None:
            return f"outcomes[{i}].{problem[0]} {problem[1]}"
    return None


class OutcomeReporterServicer(outcomes_pb2_grpc.OutcomeReporterServicer):
    """Validates outcomes and queues them on the producer (accepted = sent or kept for later delivery).

    A request is accepted whole or not at all: an invalid outcome is INVALID_ARGUMENT naming it, a full queue
    (buffer and journal: Kafka away for long) RESOURCE_EXHAUSTED; either way nothing of it was queued.
    """

    def __init__(self, producer: EventProducer) -> None:
        self._producer = producer

    def ReportOutcomes(  # noqa: N802 - gRPC method name
        self, request: outcomes_pb2.ReportOutcomesRequest, context: grpc.ServicerContext
    ) -> outcomes_pb2.ReportOutcomesResponse:
        outcomes = list(request.outcomes)
        problem = outcomes_problem(outcomes, now_ms())
        if problem is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        accepted = self._producer.send_outcomes(outcomes)  # all of them or none: they are all valid
        if accepted < len(outcomes):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the event buffer and journal are full (Kafka unreachable?): none of the {len(outcomes)} "
                "outcomes was accepted; retry later",
            )
        return outcomes_pb2.ReportOutcomesResponse(accepted=accepted)


class ParseRequestInterceptor(grpc.ServerInterceptor):
    """Parses unary requests itself, so that bytes that are no valid message get INVALID_ARGUMENT (gRPC would
    answer INTERNAL and log a traceback for every such call)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        inner, deserialize = handler.unary_unary, handler.request_deserializer

        def parsed(raw: bytes, context: grpc.ServicerContext) -> Any:
            try:
                request = deserialize(raw)
            except DecodeError:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "request: cannot be parsed as the method's request message",
                )
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(parsed, response_serializer=handler.response_serializer)


def build_server(
    producer: EventProducer,
    address: str,
    max_workers: int = 8,
    security: ServerSecurity | None = None,
    health_servicer: health.HealthServicer | None = None,
) -> tuple[grpc.Server, int]:
    """A gRPC server (not started yet) with the reporter, health and reflection; returns it and its port.

    Args:
        security: TLS credentials and the bearer token clients must send (default: plaintext, no token).
        health_servicer: the health service to serve (SERVING from here on), for the caller to turn
            NOT_SERVING.
    """
    security = security or ServerSecurity()
    interceptors: list[grpc.ServerInterceptor] = (
        [BearerTokenInterceptor(security.token)] if security.token else []
    )
    interceptors.append(ParseRequestInterceptor())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=interceptors, options=SERVER_OPTIONS
    )
    outcomes_pb2_grpc.add_OutcomeReporterServicer_to_server(OutcomeReporterServicer(producer), server)
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (SERVICE_NAME, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, bind(server, address, security.credentials)  # BindError (an OSError) when it cannot listen


DESCRIPTION = """\
gRPC OutcomeReporter (mtrank.v1.OutcomeReporter): accepts outcomes from product backends and writes them to
Kafka, keeping them in a buffer and then a journal file while the broker is away. Also serves grpc.health.v1
and server reflection."""

EPILOG = """\
environment:
  MTRANK_DATA_DIR  folder of the default --journal (default: .data in the source tree; the images set /data)

exit status: 0 after SIGTERM or SIGINT (health NOT_SERVING, then in-flight calls finish within --grace-s and
the producer delivers what it holds); 2 a bad flag, file, journal or port."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analytics.events.outcome_server",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    parser.add_argument(
        "--address", default="127.0.0.1:50053", help="HOST:PORT to listen on (port 0: any free port)"
    )
    parser.add_argument("--topic", default=OUTCOMES_TOPIC, help="outcomes topic")
    parser.add_argument(
        "--journal",
        metavar="FILE",
        default=str(DEFAULT_DATA_DIR / "journal" / "outcome-server.journal"),
        help="where outcomes wait while Kafka is away (one outcome server per file)",
    )
    parser.add_argument(
        "--grace-s", metavar="SECONDS", type=NON_NEGATIVE, default=5.0, help="drain time on SIGTERM/SIGINT"
    )
    add_metrics_arguments(parser, "events sent, buffered, journalled, dropped")
    add_log_level_argument(parser)
    add_server_arguments(parser)
    return parser


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags (None when nothing is), checked before anything starts.

    gRPC listened on ``:70000`` modulo 65536 (port 4464), and a malformed ``--bootstrap`` or ``--topic`` only
    failed in the producer's sender thread, holding every
    outcome in the journal.
    """
    problem = address_problem(args.address, least_port=0)
    if problem is not None:
        return f"--address {args.address}: {problem}"
    problem = bootstrap_problem(args.bootstrap)
    if problem is not None:
        return f"--bootstrap {args.bootstrap}: {problem}"
    problem = topic_problem(args.topic)
    return None if problem is None else f"--topic {args.topic}: {problem}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    problem = argument_problem(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        serve_metrics_from_args(args, log)  # first: a port in use fails before anything else starts
        security = server_security_from_args(args, "outcome server")
    except (MetricsPortError, SecurityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        producer = EventProducer(
            args.bootstrap,
            outcomes_topic=args.topic,
            journal_path=args.journal,
            client_id="mtrank-outcome-server",
        )
    except JournalError as exc:  # --journal unwritable, or held by another outcome server
        print(f"error: --journal: {exc}", file=sys.stderr)
        return 2
    health_service = health.HealthServicer()
    try:
        server, port = build_server(producer, args.address, security=security, health_servicer=health_service)
    except OSError as exc:
        producer.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server.start()
    log.info(
        "OutcomeReporter listening on %s (%s%s): outcomes to Kafka %s topic %s, journal %s",
        args.address.rpartition(":")[0] + f":{port}",
        "TLS" if security.credentials is not None else "plaintext",
        ", bearer token required" if security.token else "",
        args.bootstrap,
        args.topic,
        args.journal,
    )
    stopping.wait()
    log.info("signal received: NOT_SERVING, draining for up to %.1f s", args.grace_s)
    health_service.enter_graceful_shutdown()  # clients watching health move away before the port closes
    server.stop(args.grace_s).wait()
    producer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
