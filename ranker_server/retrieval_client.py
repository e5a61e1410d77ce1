"""grpc.aio client of the retrieval service, shaped as the data plane's ``CandidateSource``."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import numpy as np
from grpc import aio

from grpc_security import ClientSecurity
from proto import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from ranker_server.dataplane import Retrieved
from ranker_server.errors import DeadlineExceeded, UpstreamError


class RetrievalClient:
    """Calls ``Retriever/Retrieve`` with the retrieval-layer variant's model; one channel per process."""

    def __init__(self, target: str, security: ClientSecurity | None = None) -> None:
        self._target = target
        security = security or ClientSecurity()
        credentials = security.credentials
        self._channel = (
            aio.secure_channel(target, credentials) if credentials else aio.insecure_channel(target)
        )
        self._metadata = tuple(security.metadata)
        self._stub = retrieval_pb2_grpc.RetrieverStub(self._channel)

    async def retrieve(
        self,
        request_id: str,
        user_id: str,
        k: int,
        model: tuple[str, str] | None,
        attributes: Mapping[str, str],
        timeout_s: float | None,
    ) -> Retrieved:
        request = retrieval_pb2.RetrieveRequest(
            request_id=request_id, user_id=user_id, k=k, attributes=dict(attributes)
        )
        if model is not None:
            request.model.CopyFrom(common_pb2.ModelRef(name=model[0], version=model[1]))
        try:
            response = await self._stub.Retrieve(request, timeout=timeout_s, metadata=self._metadata)
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"retrieval at {self._target} timed out") from None
            raise UpstreamError(
                f"retrieval at {self._target} failed: {exc.code().name}: {exc.details()}"
            ) from None
        return Retrieved(
            candidate_ids=np.asarray(response.candidate_ids, np.int64),
            model=(response.model.name, response.model.version),
        )

    async def close(self) -> None:
        await self._channel.close()
