"""``python -m retrieval_server``: parse flags, load the model versions, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from grpc_serving import (
    BindError,
    HelpFormatter,
    SecurityError,
    add_log_level_argument,
    add_server_arguments,
    configure_logging,
    server_security_from_args,
)
from grpc_serving.flag_types import NON_NEGATIVE, PORT, POSITIVE, POSITIVE_INT, number
from retrieval_server.errors import PackageError
from retrieval_server.index import EXACT_MAX_ITEMS
from retrieval_server.model_repository import ModelRepository
from retrieval_server.server import RetrievalServer

logger = logging.getLogger("retrieval_server")


DESCRIPTION = """\
Serve mtrank.v1.Retriever over gRPC: embedding-based retrieval over versioned model packages (the user's
embedding from the package's ONNX encoder, then exact or ANN search over the item index), with
grpc.health.v1, server reflection and Prometheus /metrics."""

EPILOG = """\
exit status: 0 after SIGTERM or SIGINT (health NOT_SERVING, then in-flight requests finish within --grace);
2 a bad flag, package, experiment config, TLS/token file or port."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval_server",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--repository", metavar="DIR", required=True,
                        help="model repository root (<root>/<name>/<version>/)")  # fmt: skip
    parser.add_argument("--model", action="append", required=True, metavar="NAME:VERSION",
                        help="a version to serve (repeat for several); the first is the default")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind ([::] for all interfaces)")
    parser.add_argument("--port", type=PORT, default=50052, help="gRPC port (0 = any free port)")
    parser.add_argument("--metrics-port", type=PORT, default=None,
                        help="Prometheus /metrics port on --host (0 = any free port; unset: off, as every "
                             "server; the deploy files use 9102)")  # fmt: skip
    parser.add_argument("--max-k", metavar="K", type=POSITIVE_INT, default=1000,
                        help="largest k a request may ask for")  # fmt: skip
    parser.add_argument("--exclude-neighbors", action="store_true",
                        help="never return a user's neighbours in the indexed graph (friend suggestion: "
                             "existing friends are not suggestions); unseen users: the neighbor_ids they send")
    parser.add_argument("--threads", metavar="N", type=POSITIVE_INT, default=4,
                        help="threads for ONNX runs and index searches")
    parser.add_argument("--exact-max-items", metavar="N", type=number(int, 0), default=EXACT_MAX_ITEMS,
                        help="corpora up to this size use exact search, larger ones the --ann index")
    parser.add_argument("--ann", choices=["pq", "hnsw"], default="pq",
                        help="ANN index for large corpora: faiss PQ fast-scan + exact re-rank, or faiss HNSW")
    parser.add_argument("--poll-interval", metavar="SECONDS", type=NON_NEGATIVE, default=30.0,
                        help="seconds between checks for rewritten packages to hot swap (0 = off)")
    parser.add_argument("--experiments", metavar="FILE",
                        help="experiment config (experiment_router YAML): requests naming no model "
                        "get their retrieval-layer variant; without it they get the first --model")
    parser.add_argument("--experiments-poll", metavar="SECONDS", type=POSITIVE,
                        default=2.0, help="seconds between checks of --experiments for changes")  # fmt: skip
    parser.add_argument("--grace", metavar="SECONDS", type=NON_NEGATIVE, default=10.0,
                        help="seconds to drain in-flight requests on SIGTERM/SIGINT")
    add_server_arguments(parser)
    add_log_level_argument(parser)
    return parser


def parse_model(value: str) -> tuple[str, str]:
    name, sep, version = value.partition(":")
    if not sep or not name or not version:
        raise SystemExit(f"--model expects NAME:VERSION, got {value!r}")
    return name, version


async def serve(args: argparse.Namespace) -> None:
    security = server_security_from_args(args, "retrieval")
    served = [parse_model(value) for value in args.model]
    watcher = None
    if args.experiments:  # read and checked before the models load, which can take minutes
        from experiment_router.reload import ConfigWatcher

        def model_exists(stage: str, name: str, version: str) -> bool:
            # a retrieval variant naming no --model got NOT_FOUND for each of its requests, health SERVING
            return stage != "retrieval" or (name, version) in served

        watcher = ConfigWatcher(args.experiments, interval_s=args.experiments_poll, model_exists=model_exists)
    repository = ModelRepository(args.repository, exact_max_items=args.exact_max_items, ann=args.ann)
    for i, key in enumerate(served):
        repository.load(*key, default=i == 0)
    server = RetrievalServer(repository, host=args.host, port=args.port, metrics_port=args.metrics_port,
                             max_k=args.max_k, threads=args.threads, poll_interval_s=args.poll_interval,
                             router_source=watcher, exclude_neighbours=args.exclude_neighbors, security=security)
    await server.start()
    if watcher is not None:
        watcher.start()
        config = watcher.current.config
        running = [e.key for e in config.experiments if e.status == "running" and e.stage == "retrieval"]
        logger.info("experiments %s: %s", args.experiments, ", ".join(running) or "no running retrieval test")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    logger.info("signal received: draining for up to %.1f s", args.grace)
    await server.stop(args.grace)
    if watcher is not None:
        watcher.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    import onnxruntime

    # onnxruntime-gpu on a machine without CUDA libraries logs errors while falling back to CPU; the repository
    # logs the provider each session actually got instead.
    onnxruntime.set_default_logger_severity(3)
    try:
        asyncio.run(serve(args))
    except (PackageError, ValueError, SecurityError, BindError) as exc:  # package, config, TLS/token file, port
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
