"""``python -m ranker_server``: parse flags into ``ServerSettings`` and serve (nothing else happens here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from grpc_serving import HelpFormatter, add_log_level_argument, add_server_arguments, configure_logging
from ranker_server.config import BatchingSettings, RuntimeSettings, ServerSettings

DESCRIPTION = """\
Serve Rank over gRPC for every ranking variant of the running experiments. Loads each model version the
experiment config names from the model repository, hot-reloads new versions and config changes, logs
exposures to Kafka. Also serves grpc.health.v1 (per service) and server reflection."""

EPILOG = """\
environment:
  MTRANK_DATA_DIR  with --kafka, exposures wait in $MTRANK_DATA_DIR/journal/ while Kafka is away
                   (default: .data in the source tree; the images set /data)

exit status: 0 after SIGTERM or SIGINT (health NOT_SERVING for --not-serving-delay, then in-flight requests
finish within --grace); 2 a bad flag, config, package, file or port; with --workers, the worst of theirs."""


def build_parser() -> argparse.ArgumentParser:
    """The flags; each ``dest`` is the name of the settings field it sets, so that errors name the flag."""
    parser = argparse.ArgumentParser(
        prog="python -m ranker_server", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    d = ServerSettings.model_fields
    b, r = BatchingSettings.model_fields, RuntimeSettings.model_fields

    group = parser.add_argument_group("models and experiments")
    group.add_argument(
        "--repository",
        metavar="DIR",
        type=Path,
        required=True,
        help="model repository folder: <name>/<version>/ packages",
    )
    group.add_argument(
        "--experiments",
        metavar="FILE",
        type=Path,
        required=True,
        help="experiment config (YAML or JSON), reloaded on change",
    )
    group.add_argument(
        "--poll-interval",
        dest="poll_interval_s",
        metavar="SECONDS",
        type=float,
        default=d["poll_interval_s"].default,
        help="seconds between checks for new model versions and config changes",
    )

    group = parser.add_argument_group("network")
    group.add_argument(
        "--host", default=d["host"].default, help="address to bind; 0.0.0.0 for all interfaces"
    )
    group.add_argument("--port", type=int, default=d["port"].default, help="gRPC port (0 = pick a free one)")
    group.add_argument(
        "--metrics-port",
        type=int,
        default=d["metrics_port"].default,
        help="Prometheus /metrics port on --host (0 = any free port; unset: off); worker i of --workers uses "
        "PORT+i",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=d["workers"].default,
        help="server processes sharing --port through SO_REUSEPORT",
    )
    group.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        default=d["event_loop"].default,
        help="asyncio event loop implementation (uvloop is faster; asyncio needs no extra package)",
    )
    add_server_arguments(parser.add_argument_group("security"))

    group = parser.add_argument_group("requests")
    group.add_argument(
        "--max-candidates",
        type=int,
        default=d["max_candidates"].default,
        help="candidates per request; more get INVALID_ARGUMENT",
    )
    group.add_argument(
        "--default-timeout",
        dest="default_timeout_s",
        metavar="SECONDS",
        type=float,
        default=d["default_timeout_s"].default,
        help="seconds allowed to a request that sets no deadline",
    )
    group.add_argument(
        "--open-inference",
        action=argparse.BooleanOptionalAction,
        default=d["open_inference"].default,
        help="also serve inference.GRPCInferenceService (Open Inference Protocol: Triton/KServe clients "
        "call a loaded model version directly, bypassing experiments)",
    )

    group = parser.add_argument_group("retrieval (for requests without candidates)")
    group.add_argument(
        "--retrieval",
        metavar="HOST:PORT",
        help="retrieval service to ask for candidates (or a gRPC target such as dns:///HOST:PORT); "
        "unset: requests must bring their candidates",
    )
    group.add_argument(
        "--retrieval-tls-ca",
        type=Path,
        metavar="PEM",
        help="CA bundle to verify the retrieval service with; enables TLS to it",
    )
    group.add_argument(
        "--retrieval-token-file",
        metavar="FILE",
        type=Path,
        help="file holding the bearer token to send to the retrieval service",
    )
    group.add_argument(
        "--retrieve-k",
        type=int,
        default=d["retrieve_k"].default,
        help="candidates to retrieve when the request does not say",
    )
    group.add_argument(
        "--retrieval-timeout",
        dest="retrieval_timeout_s",
        metavar="SECONDS",
        type=float,
        default=d["retrieval_timeout_s"].default,
        help="seconds a Retrieve call may take (less when the request's deadline comes sooner)",
    )
    group.add_argument(
        "--retrieval-probe-interval",
        dest="retrieval_probe_interval_s",
        metavar="SECONDS",
        type=float,
        default=d["retrieval_probe_interval_s"].default,
        help="seconds between checks of retrieval (health service mtrank.v1.Ranker/retrieval)",
    )

    group = parser.add_argument_group("exposure events")
    group.add_argument(
        "--kafka",
        metavar="BOOTSTRAP",
        help="Kafka bootstrap servers, host:port[,host:port]; unset: no exposures are logged",
    )
    group.add_argument(
        "--exposure-topic", default=d["exposure_topic"].default, help="Kafka topic of exposures"
    )

    group = parser.add_argument_group("shutdown (SIGTERM, SIGINT)")
    group.add_argument(
        "--not-serving-delay",
        dest="not_serving_delay_s",
        metavar="SECONDS",
        type=float,
        default=d["not_serving_delay_s"].default,
        help="seconds health reports NOT_SERVING first, still serving, so that balancers move away",
    )
    group.add_argument(
        "--grace",
        dest="grace_s",
        metavar="SECONDS",
        type=float,
        default=d["grace_s"].default,
        help="seconds in-flight requests then have to finish",
    )

    group = parser.add_argument_group("batching and ONNX Runtime")
    group.add_argument(
        "--max-batch-rows",
        type=int,
        default=b["max_batch_rows"].default,
        help="candidate rows per ONNX Runtime call",
    )
    group.add_argument(
        "--max-delay-ms",
        metavar="MS",
        type=float,
        default=b["max_delay_ms"].default,
        help="milliseconds a batch waits to fill up (0 = it takes what queued during the previous run)",
    )
    group.add_argument(
        "--max-queue-rows",
        type=int,
        default=b["max_queue_rows"].default,
        help="queued rows per model version before RESOURCE_EXHAUSTED",
    )
    group.add_argument(
        "--intra-op-threads",
        type=int,
        default=r["intra_op_threads"].default,
        help="ONNX Runtime threads per call (0 = the available cores, divided among --workers); with "
        "--spinning alone, concurrent calls divide them among --inference-threads",
    )
    group.add_argument(
        "--spinning",
        choices=["off", "alone", "on"],
        default=r["spinning"].default,
        help="ONNX Runtime pool threads spin-wait during a run (never between runs): never, only in runs "
        "alone in the process (a second CPU session) while those measure faster spinning, or in every run",
    )
    group.add_argument(
        "--inference-threads",
        type=int,
        default=r["inference_threads"].default,
        help="concurrent ONNX Runtime calls",
    )
    group.add_argument(
        "--split-rows",
        metavar="ROWS",
        type=int,
        default=r["split_rows"].default,
        help="with --spinning alone on CPU: score a run of at least this many rows as --inference-threads "
        "parts at once (rows are independent; ONNX Runtime's own split of one run left a core idle: 3.0 ms "
        "with two threads, 1.97 ms as two halves at once, 500 rows); 0 = never",
    )
    group.add_argument(
        "--lone-runs",
        choices=["loop", "executor"],
        default=r["lone_runs"].default,
        help="while calls arrive one at a time, 'loop' runs ONNX Runtime (or a split run's first part) on "
        "the event loop's thread, without hand-offs to and from an executor thread; under concurrent calls "
        "every run goes to the executor either way",
    )
    group.add_argument(
        "--factored-max-mb",
        metavar="MB",
        type=int,
        default=r["factored_max_mb"].default,
        help="MB per model version for the item parts of its factored graph (Rank computes each item's share "
        "of the input layers once, at load; every --workers process holds its own); 0 = package graph only",
    )

    add_log_level_argument(parser)
    return parser


def _fields(model: type[BaseModel], args: argparse.Namespace) -> dict[str, Any]:
    return {name: value for name, value in vars(args).items() if name in model.model_fields}


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The settings the parsed flags give.

    Raises:
        ValidationError: located at flag ``dest`` names (``problem_of`` turns them into flags).
    """
    return ServerSettings.model_validate(
        {
            **_fields(ServerSettings, args),
            "batching": _fields(BatchingSettings, args),
            "runtime": _fields(RuntimeSettings, args),
        }
    )


def problem_of(error: ErrorDetails, parser: argparse.ArgumentParser) -> str:
    """One settings error as the flag, the value given and what is wrong (``--grace -1.0: ...``)."""
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a check of several flags together
        return message
    dest = str(error["loc"][-1])
    flags = [action.option_strings[0] for action in parser._actions if action.dest == dest] or [dest]
    return f"{flags[0]} {error['input']}: {message}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:  # one line naming the flags, without the usage text
        problems = "; ".join(problem_of(error, parser) for error in exc.errors())
        print(f"{parser.prog}: error: {problems}", file=sys.stderr)
        return 2
    from ranker_server.app import STARTUP_ERRORS, run  # after parsing: --help stays fast

    try:
        return run(settings)
    except STARTUP_ERRORS as exc:
        print(f"ranker_server: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
