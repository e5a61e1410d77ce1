"""The shared TLS/token plumbing: option errors, the plaintext-token warning, and the thread-pool interceptor on
the outcome server (the grpc.aio one is exercised by the ranker's and the retrieval server's tests)."""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from analytics.events.outcome_server import build_server
from analytics.events.producer import EventProducer
from analytics.kafka.broker import free_port
from grpc_serving import SecurityError, load_client_security, load_server_security
from proto import events_pb2, outcomes_pb2, outcomes_pb2_grpc

TOKEN = "s3cret-token"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_token_without_tls_warns_and_bad_files_name_the_option(
    tmp_path: Path, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="grpc_serving"):
        security = load_server_security(None, None, token_file, "retrieval")
        client = load_client_security(None, token_file, "--retrieval")
    assert security.token == TOKEN and security.credentials is None
    assert "retrieval: --auth-token-file without --tls-cert/--tls-key" in caplog.text
    assert client.metadata == (("authorization", f"Bearer {TOKEN}"),)
    assert "--retrieval-token-file without --retrieval-tls-ca" in caplog.text
    with pytest.raises(SecurityError, match="--tls-cert and --tls-key must be given together"):
        load_server_security(tmp_path / "cert.pem", None, None, "retrieval")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecurityError, match="--retrieval-token-file .*empty: the file is empty"):
        load_client_security(None, tmp_path / "empty", "--retrieval")
    with pytest.raises(SecurityError, match="--retrieval-tls-ca .*missing.pem: No such file"):
        load_client_security(tmp_path / "missing.pem", None, "--retrieval")


@pytest.mark.integration
def test_outcome_server_tls_and_token(certificate: tuple[Path, Path], token_file: Path) -> None:
    cert, key = certificate
    producer = EventProducer(f"127.0.0.1:{free_port()}", journal_path=None, delivery_timeout_s=0.5)
    security = load_server_security(cert, key, token_file, "outcome server")
    server, port = build_server(producer, "127.0.0.1:0", security=security)
    server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = outcomes_pb2_grpc.OutcomeReporterStub(channel)
            request = outcomes_pb2.ReportOutcomesRequest(
                outcomes=[events_pb2.Outcome(user_id="u1", metric="click")]
            )
            auth = (("authorization", f"Bearer {TOKEN}"),)
            assert stub.ReportOutcomes(request, metadata=auth, timeout=5).accepted == 1
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.RpcError) as info:
                    stub.ReportOutcomes(request, metadata=metadata, timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes carry no token
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.RpcError) as info:
                outcomes_pb2_grpc.OutcomeReporterStub(plain).ReportOutcomes(request, metadata=auth, timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # plaintext cannot talk to a TLS port
    finally:
        server.stop(0)
        producer.close(timeout=0.5)


@pytest.mark.integration
async def test_a_burst_of_2000_calls_is_answered_not_cancelled_by_grpc_core() -> None:
    """gRPC core cancels calls at random once 1,000 wait for the application; SERVER_OPTIONS raise that."""
    from grpc import aio

    producer = EventProducer(f"127.0.0.1:{free_port()}", journal_path=None, buffer_size=10**6)
    server, port = build_server(producer, "127.0.0.1:0")
    server.start()
    request = outcomes_pb2.ReportOutcomesRequest(outcomes=[events_pb2.Outcome(user_id="u1", metric="click")])
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = outcomes_pb2_grpc.OutcomeReporterStub(channel)

            async def one() -> str:
                try:
                    await stub.ReportOutcomes(request, timeout=60)
                except aio.AioRpcError as exc:
                    return exc.code().name
                return "OK"

            for _ in range(2):
                codes = await asyncio.gather(*(one() for _ in range(2000)))
                assert set(codes) == {"OK"}, collections.Counter(codes)
    finally:
        server.stop(0)
        producer.close(timeout=0.5)


def test_outcome_server_on_a_port_in_use_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """grpc raises a RuntimeError that names no cause; ``bind`` turns it into a BindError (an OSError)."""
    from analytics.events.outcome_server import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--bootstrap", "127.0.0.1:1", "--address", f"127.0.0.1:{port}", "--journal", str(tmp_path / "j")]
        assert main(argv) == 2  # was a RuntimeError traceback
    err = capsys.readouterr().err
    assert f"error: cannot listen on 127.0.0.1:{port}: the port is in use" in err and "Traceback" not in err
