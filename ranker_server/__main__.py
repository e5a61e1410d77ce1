"""``python -m ranker_server``: parse flags into ``ServerSettings`` and serve (nothing else happens here)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from ranker_server.config import BatchingSettings, RuntimeSettings, ServerSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ranker_server",
        description=(
            "Serve Rank over gRPC for every ranking variant of the running experiments. Loads each model "
            "version the experiment config names from the model repository, hot-reloads new versions and "
            "config changes, logs exposures to Kafka."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = ServerSettings.model_fields
    b, r = BatchingSettings.model_fields, RuntimeSettings.model_fields
    parser.add_argument(
        "--repository", type=Path, required=True, help="model repository: <name>/<version>/ packages"
    )
    parser.add_argument("--experiments", type=Path, required=True, help="experiment config (YAML or JSON)")
    parser.add_argument(
        "--host", default=d["host"].default, help="address to bind; 0.0.0.0 for all interfaces"
    )
    parser.add_argument("--port", type=int, default=d["port"].default, help="gRPC port (0 = pick a free one)")
    parser.add_argument("--metrics-port", type=int, default=d["metrics_port"].default,
                        help="Prometheus port on --host (0 = off); worker i of --workers uses PORT+i")  # fmt: skip
    parser.add_argument(
        "--retrieval", metavar="HOST:PORT", help="retrieval service for requests without candidates"
    )
    parser.add_argument("--retrieval-tls-ca", type=Path, metavar="PEM",
                        help="CA bundle to verify the retrieval service with; enables TLS to it")  # fmt: skip
    parser.add_argument("--retrieval-token-file", type=Path,
                        help="file holding the bearer token to send to the retrieval service")  # fmt: skip
    parser.add_argument(
        "--retrieve-k", type=int, default=d["retrieve_k"].default, help="candidates to retrieve"
    )
    parser.add_argument("--retrieval-probe-interval", type=float, default=d["retrieval_probe_interval_s"].default,
                        help="seconds between checks of retrieval (health service mtrank.v1.Ranker/retrieval)")  # fmt: skip
    parser.add_argument(
        "--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers for exposure events (off if unset)"
    )
    parser.add_argument("--exposure-topic", default=d["exposure_topic"].default)
    parser.add_argument("--workers", type=int, default=d["workers"].default,
                        help="server processes sharing the port through SO_REUSEPORT")  # fmt: skip
    parser.add_argument("--event-loop", choices=["uvloop", "asyncio"], default=d["event_loop"].default,
                        help="asyncio event loop implementation (uvloop is faster; asyncio needs no extra package)")  # fmt: skip
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain; enables TLS with --tls-key")
    parser.add_argument("--tls-key", type=Path, help="PEM private key")
    parser.add_argument(
        "--auth-token-file", type=Path, help="file holding the bearer token clients must send"
    )
    parser.add_argument("--open-inference", action=argparse.BooleanOptionalAction, default=d["open_inference"].default,
                        help="also serve inference.GRPCInferenceService (Open Inference Protocol: Triton/KServe "
                             "clients call a loaded model version directly, bypassing experiments)")  # fmt: skip
    parser.add_argument("--max-candidates", type=int, default=d["max_candidates"].default,
                        help="larger requests get INVALID_ARGUMENT")  # fmt: skip
    parser.add_argument("--default-timeout", type=float, default=d["default_timeout_s"].default,
                        help="seconds allowed to a request that sets no deadline")  # fmt: skip
    parser.add_argument("--poll-interval", type=float, default=d["poll_interval_s"].default,
                        help="seconds between checks for new model versions")  # fmt: skip
    parser.add_argument(
        "--grace", type=float, default=d["grace_s"].default, help="shutdown drain period, seconds"
    )
    parser.add_argument("--not-serving-delay", type=float, default=d["not_serving_delay_s"].default,
                        help="seconds health reports NOT_SERVING before the server stops taking requests")  # fmt: skip
    parser.add_argument("--max-batch-rows", type=int, default=b["max_batch_rows"].default,
                        help="candidate rows per ONNX Runtime call")  # fmt: skip
    parser.add_argument("--max-delay-ms", type=float, default=b["max_delay_ms"].default,
                        help="how long a batch waits to fill up")  # fmt: skip
    parser.add_argument("--max-queue-rows", type=int, default=b["max_queue_rows"].default,
                        help="queued rows per model version before RESOURCE_EXHAUSTED")  # fmt: skip
    parser.add_argument("--intra-op-threads", type=int, default=r["intra_op_threads"].default,
                        help="ONNX Runtime threads per call (0 = the available cores, divided among --workers); "
                             "with --spinning alone, concurrent calls divide them among --inference-threads")  # fmt: skip
    parser.add_argument("--spinning", choices=["off", "alone", "on"], default=r["spinning"].default,
                        help="ONNX Runtime pool threads spin-wait during a run (never between runs): never, only "
                             "in runs alone in the process (a second CPU session) while those measure faster "
                             "spinning, or in every run")  # fmt: skip
    parser.add_argument("--inference-threads", type=int, default=r["inference_threads"].default,
                        help="concurrent ONNX Runtime calls")  # fmt: skip
    parser.add_argument("--factored-max-mb", type=int, default=r["factored_max_mb"].default,
                        help="MB per model version for the item parts of its factored graph (Rank computes "
                             "each item's share of the input layers once, at load; every --workers process holds "
                             "its own); 0 = package graph only")  # fmt: skip
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        repository=args.repository,
        experiments=args.experiments,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        retrieval=args.retrieval,
        retrieval_tls_ca=args.retrieval_tls_ca,
        retrieval_token_file=args.retrieval_token_file,
        retrieve_k=args.retrieve_k,
        retrieval_probe_interval_s=args.retrieval_probe_interval,
        kafka=args.kafka,
        exposure_topic=args.exposure_topic,
        workers=args.workers,
        event_loop=args.event_loop,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth_token_file=args.auth_token_file,
        open_inference=args.open_inference,
        max_candidates=args.max_candidates,
        default_timeout_s=args.default_timeout,
        poll_interval_s=args.poll_interval,
        grace_s=args.grace,
        not_serving_delay_s=args.not_serving_delay,
        batching=BatchingSettings(
            max_batch_rows=args.max_batch_rows,
            max_delay_ms=args.max_delay_ms,
            max_queue_rows=args.max_queue_rows,
        ),
        runtime=RuntimeSettings(
            intra_op_threads=args.intra_op_threads,
            inference_threads=args.inference_threads,
            spinning=args.spinning,
            factored_max_mb=args.factored_max_mb,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        parser.error(problems)
    from ranker_server.app import STARTUP_ERRORS, run  # after parsing: --help stays fast

    try:
        return run(settings)
    except STARTUP_ERRORS as exc:
        print(f"ranker_server: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
