"""TLS server credentials and the bearer-token interceptor (both off by default)."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_serving import AioBearerTokenInterceptor
from proto import ranking_pb2, ranking_pb2_grpc, retrieval_pb2_grpc
from ranker_server.app import running_server
from tests.ranker_server.conftest import FakeRouter, MutableSource, code_of, make_settings
from tests.ranker_server.test_retrieval import FakeRetriever

pytestmark = pytest.mark.integration


REQUEST = ranking_pb2.RankRequest(user_id="out-1", candidate_ids=[1000, 1001, 1002])


async def test_tls_and_bearer_token(repository: Path, certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    settings = make_settings(repository, tls_cert=cert, tls_key=key, auth_token_file=token_file)
    async with running_server(settings, MutableSource(FakeRouter())) as server:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        target = f"localhost:{server.port}"
        async with aio.secure_channel(target, credentials) as channel:
            stub = ranking_pb2_grpc.RankerStub(channel)
            response = await stub.Rank(REQUEST, metadata=(("authorization", "Bearer s3cret-token"),))
            assert len(response.candidate_ids) == 3
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret-token"),)):
                with pytest.raises(aio.AioRpcError) as info:
                    await stub.Rank(REQUEST, metadata=metadata)
                assert code_of(info.value) == grpc.StatusCode.UNAUTHENTICATED
            # health probes carry no token
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as plain:
            with pytest.raises(aio.AioRpcError) as info:
                await ranking_pb2_grpc.RankerStub(plain).Rank(REQUEST, timeout=2)
            assert code_of(info.value) == grpc.StatusCode.UNAVAILABLE  # plaintext cannot talk to a TLS port


async def test_security_is_off_by_default(repository: Path) -> None:
    settings = make_settings(repository)
    assert settings.tls_cert is None and settings.auth_token_file is None
    async with running_server(settings, MutableSource(FakeRouter())) as server:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert (await ranking_pb2_grpc.RankerStub(channel).Rank(REQUEST)).candidate_ids


def test_tls_needs_both_files(repository: Path, certificate: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="--tls-cert and --tls-key must be given together"):
        make_settings(repository, tls_cert=certificate[0])


async def test_token_without_tls_is_accepted_with_a_warning(
    repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with caplog.at_level(logging.WARNING, logger="grpc_serving"):
        async with running_server(
            make_settings(repository, auth_token_file=token_file), MutableSource(FakeRouter())
        ):
            pass
    assert "ranker: --auth-token-file without --tls-cert/--tls-key" in caplog.text


async def test_calls_to_retrieval_over_tls_with_a_token(
    repository: Path, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    token_file = tmp_path / "retrieval-token"
    token_file.write_text("upstream-token\n")
    retriever = FakeRetriever()
    upstream = aio.server(interceptors=[AioBearerTokenInterceptor("upstream-token")])
    retrieval_pb2_grpc.add_RetrieverServicer_to_server(retriever, upstream)
    port = upstream.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    )
    await upstream.start()
    try:
        settings = make_settings(
            repository, retrieval=f"localhost:{port}", retrieval_tls_ca=cert, retrieval_token_file=token_file
        )
        async with running_server(settings, MutableSource(FakeRouter())) as server:
            async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = ranking_pb2_grpc.RankerStub(channel)
                ranked = await stub.Rank(
                    ranking_pb2.RankRequest(user_id="out-1", top_k=3, retrieve_k=8), timeout=10
                )
        assert len(ranked.candidate_ids) == 3 and retriever.requests[0].k == 8
        token_file.write_text(
            "stale-token\n"
        )  # read at start: a ranker with the wrong token is refused upstream
        async with running_server(settings, MutableSource(FakeRouter())) as server:
            async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                with pytest.raises(aio.AioRpcError) as info:
                    await ranking_pb2_grpc.RankerStub(channel).Rank(
                        ranking_pb2.RankRequest(user_id="out-1"), timeout=10
                    )
        assert code_of(info.value) == grpc.StatusCode.UNAVAILABLE and "retrieval" in info.value.details()
    finally:
        await upstream.stop(0)
