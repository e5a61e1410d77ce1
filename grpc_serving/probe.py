"""``python -m grpc_serving.probe``: one grpc.health.v1 Check over TLS, for Kubernetes exec probes.

Kubelet's native gRPC probes speak plaintext only, so a server started with ``--tls-cert`` is probed from inside its
own container by this module: it calls ``127.0.0.1:PORT``, verifies the server's certificate against ``--ca`` for
``--name`` (the DNS name clients use: a certificate clients would reject fails the probe too), and exits 0 only when
the answer is SERVING. Health checks need no bearer token, so the probe sends none.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_serving import HelpFormatter, SecurityError, read_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m grpc_serving.probe",
        description="Exit 0 when the gRPC server on 127.0.0.1:PORT answers SERVING over TLS, 1 otherwise.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--port", type=int, required=True, help="the server's gRPC port")
    parser.add_argument("--ca", type=Path, required=True, help="PEM CA that signed the server's certificate")
    parser.add_argument("--name", required=True, help="DNS name the certificate must carry")
    parser.add_argument("--service", default="", help="health service to ask ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    return parser


def check(port: int, ca: Path, name: str, service: str = "", timeout_s: float = 2.0) -> str:
    """The status name the server reports for ``service`` (``SERVING``, ``NOT_SERVING``...).

    Raises:
        SecurityError: ``ca`` is unreadable.
        grpc.RpcError: no answer: the server is down, the TLS handshake failed (wrong CA or name), unknown service.
    """
    credentials = grpc.ssl_channel_credentials(root_certificates=read_file(ca, "--ca"))
    options = [("grpc.ssl_target_name_override", name)]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = f"127.0.0.1:{args.port} (service {args.service!r}, TLS name {args.name})"
    try:
        status = check(args.port, args.ca, args.name, args.service, args.timeout)
    except SecurityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(f"{target}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
