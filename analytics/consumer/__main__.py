"""``python -m analytics.consumer``: run one analytics consumer process until SIGTERM/Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from types import FrameType

from kafka.errors import KafkaError

from analytics.consumer.processor import AnalyticsConsumer
from analytics.events.producer import EXPOSURES_TOPIC, OUTCOMES_TOPIC
from analytics.kafka.broker import DEFAULT_DATA_DIR
from analytics.kafka.checks import bootstrap_problem
from analytics.store import StoreError, open_store
from grpc_serving import HelpFormatter, add_log_level_argument, configure_logging
from grpc_serving.flag_types import POSITIVE, POSITIVE_INT
from grpc_serving.metrics_endpoint import MetricsPortError, add_metrics_arguments, serve_metrics_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analytics.consumer",
        description="Consume exposures and outcomes from Kafka into the analytics event store. Offsets are "
        "committed only after the state is durable, and kept in the store: several processes with the same "
        "--group split the partitions, and must write to one store (the same --store folder or ClickHouse "
        "database; with a store each, every store misses the partitions the others hold).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    parser.add_argument(
        "--store",
        default=str(DEFAULT_DATA_DIR / "analytics" / "events"),
        help="event store: a folder (embedded DuckDB store, created when missing), duckdb:///path, or "
        "clickhouse://host:port/db (tests and migration; at scale ClickHouse ingests Kafka itself)",
    )
    parser.add_argument("--group", default="mtrank-analytics", help="consumer group id")
    parser.add_argument(
        "--exposures-topic", default=EXPOSURES_TOPIC, help="topic of the ranker's exposure events"
    )
    parser.add_argument(
        "--outcomes-topic", default=OUTCOMES_TOPIC, help="topic of the outcome events backends report"
    )
    parser.add_argument("--session-timeout-ms", type=POSITIVE_INT, default=10_000, help="group session timeout")
    parser.add_argument("--commit-interval-s", type=POSITIVE, default=2.0, help="commit at least this often")
    parser.add_argument(
        "--commit-every-events",
        type=POSITIVE_INT,
        default=200_000,
        help="commit after this many events (bigger commits write fewer, larger Parquet parts)",
    )
    parser.add_argument("--max-seconds", type=POSITIVE, default=None,
                        help="stop after this long, counted from the start (the wait for Kafka included)")
    parser.add_argument("--connect-timeout-s", type=POSITIVE, default=30.0,
                        help="give up when no --bootstrap server answers within this long at start")
    parser.add_argument("--idle-exit-s", type=POSITIVE, default=None, help="stop after this long without events")
    add_metrics_arguments(parser, "events consumed/rejected, lag per partition; off by default, since several "
                          "consumers may share a host")  # fmt: skip
    parser.add_argument("--lag-interval-s", type=POSITIVE, default=5.0, help="seconds between lag gauge updates")
    add_log_level_argument(parser)
    return parser


class _FirstProblem(logging.Handler):
    """Keeps the first warning kafka-python logs while it waits for a first broker (it logs each retry)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is None:
            self.first = record.getMessage()


@contextlib.contextmanager
def _quiet_kafka() -> Iterator[_FirstProblem]:
    """kafka-python's log records go to the handler yielded instead of the console while this lasts."""
    kafka = logging.getLogger("kafka")
    handler, propagate = _FirstProblem(), kafka.propagate
    kafka.addHandler(handler)
    kafka.propagate = False
    try:
        yield handler
    finally:
        kafka.removeHandler(handler)
        kafka.propagate = propagate


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    problem = bootstrap_problem(args.bootstrap)  # kafka-python: a traceback, or its whole bootstrap wait
    if problem is not None:
        print(f"error: --bootstrap {args.bootstrap!r}: {problem}", file=sys.stderr)
        return 2
    try:  # first: a port in use fails at once, not after Kafka's bootstrap wait
        serve_metrics_from_args(args, logging.getLogger("analytics.consumer"))
    except MetricsPortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    connect_timeout_s = args.connect_timeout_s
    if args.max_seconds is not None:  # --max-seconds bounds the whole run, the wait for Kafka too
        connect_timeout_s = min(connect_timeout_s, args.max_seconds)
    try:
        store = open_store(args.store)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("analytics.consumer").info(
        "connecting to Kafka at %s (giving up after %g s)", args.bootstrap, connect_timeout_s
    )
    try:
        with _quiet_kafka() as retries:  # one line below says why, not a screen of retries
            consumer = AnalyticsConsumer(
                args.bootstrap,
                store,
                group_id=args.group,
                topics=(args.exposures_topic, args.outcomes_topic),
                commit_every_events=args.commit_every_events,
                commit_interval_s=args.commit_interval_s,
                session_timeout_ms=args.session_timeout_ms,
                lag_interval_s=args.lag_interval_s,
                kafka_config={"bootstrap_timeout_ms": round(1000 * connect_timeout_s)},
            )
    except KafkaError as exc:
        store.close()
        print(f"error: cannot reach Kafka at --bootstrap {args.bootstrap} within {connect_timeout_s:g} s: "
              f"{retries.first or exc}", file=sys.stderr)  # fmt: skip
        return 2

    def _stop(signum: int, frame: FrameType | None) -> None:
        consumer.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        left_s = None if args.max_seconds is None else max(args.max_seconds - (time.monotonic() - started), 0.0)
        consumer.run(max_seconds=left_s, idle_exit_s=args.idle_exit_s)
    finally:
        counts = store.counts()
        store.close()
    print(json.dumps({"events_applied": consumer.events_applied, "store": args.store, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
