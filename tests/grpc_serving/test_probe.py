"""The TLS exec probe of the Kubernetes TLS overlay against a real TLS server: SERVING passes; NOT_SERVING, a
certificate for another name, a plaintext server, a server that is down and an unreadable CA fail."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from analytics.kafka.broker import free_port
from grpc_serving import bind
from grpc_serving.probe import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration  # real gRPC servers on loopback


def _server(credentials: grpc.ServerCredentials | None) -> tuple[grpc.Server, int, health.HealthServicer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("mtrank.v1.Ranker", health_pb2.HealthCheckResponse.NOT_SERVING)
    port = bind(server, "127.0.0.1:0", credentials)
    server.start()
    return server, port, servicer


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[int]:
    cert, key = certificate
    server, port, _ = _server(grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    yield port
    server.stop(None)


def test_serving_passes_and_not_serving_fails(
    tls_server: int, certificate: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ca = str(certificate[0])
    assert main(["--port", str(tls_server), "--ca", ca, "--name", "localhost"]) == 0
    assert "SERVING" in capsys.readouterr().out
    args = ["--port", str(tls_server), "--ca", ca, "--name", "localhost", "--service", "mtrank.v1.Ranker"]
    assert main(args) == 1
    assert "NOT_SERVING" in capsys.readouterr().out


def test_a_certificate_for_another_name_fails(tls_server: int, certificate: tuple[Path, Path]) -> None:
    assert main(["--port", str(tls_server), "--ca", str(certificate[0]), "--name", "mtrank-ranker"]) == 1


def test_plaintext_down_and_unreadable_ca_fail(
    tmp_path: Path, certificate: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, port, _ = _server(None)
    try:
        assert main(["--port", str(port), "--ca", str(certificate[0]), "--name", "localhost"]) == 1
    finally:
        server.stop(None)
    assert main(["--port", str(free_port()), "--ca", str(certificate[0]), "--name", "localhost"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert main(["--port", str(port), "--ca", str(tmp_path / "missing.crt"), "--name", "localhost"]) == 2
    err = capsys.readouterr().err
    assert "--ca" in err and "missing.crt" in err


def test_runs_as_python_m(tls_server: int, certificate: tuple[Path, Path]) -> None:
    """What the exec probe runs: the exit status is the verdict."""

    def probe(name: str) -> subprocess.CompletedProcess[str]:
        args = ["--port", str(tls_server), "--ca", str(certificate[0]), "--name", name]
        command = [sys.executable, "-m", "grpc_serving.probe", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)

    ok = probe("localhost")
    assert ok.returncode == 0, ok.stderr
    assert probe("elsewhere").returncode == 1
