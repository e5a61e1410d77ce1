"""TLS and a bearer token on the retrieval server (both off by default)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_serving import load_server_security
from proto import retrieval_pb2, retrieval_pb2_grpc
from retrieval_server.model_repository import ModelRepository
from retrieval_server.server import RetrievalServer

pytestmark = pytest.mark.integration


async def test_tls_and_bearer_token(
    built_repository: Path, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    models = ModelRepository(built_repository)
    models.load("ssmtl", "1", default=True)
    server = RetrievalServer(models, port=0, security=load_server_security(cert, key, token, "retrieval"))
    await server.start()
    request = retrieval_pb2.RetrieveRequest(user_id="5", k=3)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
            stub = retrieval_pb2_grpc.RetrieverStub(channel)
            auth = (("authorization", "Bearer s3cret-token"),)
            assert len((await stub.Retrieve(request, metadata=auth)).candidate_ids) == 3
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(aio.AioRpcError) as info:
                    await stub.Retrieve(request, metadata=metadata)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes carry no token
        # refused calls are counted too (the token interceptor ran first, so they were in no error ratio)
        counted = {code: server.metrics.registry.get_sample_value("retrieval_requests_total", {"code": code})
                   for code in ("OK", "UNAUTHENTICATED")}
        assert counted == {"OK": 1, "UNAUTHENTICATED": 2}
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as plain:
            with pytest.raises(aio.AioRpcError) as info:
                await retrieval_pb2_grpc.RetrieverStub(plain).Retrieve(request, metadata=auth, timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # plaintext cannot talk to a TLS port
    finally:
        await server.stop(0)
