"""``python -m analytics.consumer``: run one analytics consumer process until SIGTERM/Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
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
from analytics.metrics_endpoint import MetricsPortError, serve_metrics
from analytics.store import StoreError, open_store


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analytics.consumer",
        description="Consume exposures and outcomes from Kafka into the analytics event store. Offsets are "
        "committed only after the state is durable, and kept in the store: several processes with the same "
        "--group split the partitions, and must write to one store (the same --store folder or ClickHouse "
        "database; with a store each, every store misses the partitions the others hold).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    parser.add_argument(
        "--store",
        default=str(DEFAULT_DATA_DIR / "analytics" / "events"),
        help="event store: a folder (embedded DuckDB store, created when missing), duckdb:///path, or "
        "clickhouse://host:port/db (tests and migration; at scale ClickHouse ingests Kafka itself)",
    )
    parser.add_argument("--group", default="mtrank-analytics", help="consumer group id")
    parser.add_argument("--exposures-topic", default=EXPOSURES_TOPIC)
    parser.add_argument("--outcomes-topic", default=OUTCOMES_TOPIC)
    parser.add_argument("--session-timeout-ms", type=int, default=10_000, help="group session timeout")
    parser.add_argument("--commit-interval-s", type=float, default=2.0, help="commit at least this often")
    parser.add_argument(
        "--commit-every-events",
        type=int,
        default=200_000,
        help="commit after this many events (bigger commits write fewer, larger Parquet parts)",
    )
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop after this long, counted from the start (the wait for Kafka included)")
    parser.add_argument("--connect-timeout-s", type=float, default=30.0,
                        help="give up when no --bootstrap server answers within this long at start")
    parser.add_argument("--idle-exit-s", type=float, default=None, help="stop after this long without events")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus /metrics here (events consumed/rejected, lag per partition); off "
                             "by default, since several consumers may share a host")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="interface for /metrics (0.0.0.0: all)")
    parser.add_argument("--lag-interval-s", type=float, default=5.0, help="seconds between lag gauge updates")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
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
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
    for flag, value in (
        ("--max-seconds", args.max_seconds),
        ("--connect-timeout-s", args.connect_timeout_s),
        ("--idle-exit-s", args.idle_exit_s),
        ("--session-timeout-ms", args.session_timeout_ms),
        ("--commit-interval-s", args.commit_interval_s),
        ("--commit-every-events", args.commit_every_events),
        ("--lag-interval-s", args.lag_interval_s),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):  # NaN passes every comparison
            print(f"error: {flag} must be a number > 0, got {value}", file=sys.stderr)
            return 2
    problem = bootstrap_problem(args.bootstrap)  # kafka-python: a traceback, or its whole bootstrap wait
    if problem is not None:
        print(f"error: --bootstrap {args.bootstrap!r}: {problem}", file=sys.stderr)
        return 2
    if args.metrics_port is not None:  # first: a port in use fails at once, not after Kafka's bootstrap wait
        try:
            bound = serve_metrics(args.metrics_port, args.metrics_host)
        except MetricsPortError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        logging.getLogger("analytics.consumer").info("metrics on %s:%d", args.metrics_host, bound)
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
