"""Transport only: RetrieveRequest -> RetrieveQuery -> data plane -> RetrieveResponse."""

from __future__ import annotations

import numpy as np
from grpc import aio

from proto import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from retrieval_server.dataplane import RetrievalDataPlane, RetrieveQuery


def query_from_grpc(request: retrieval_pb2.RetrieveRequest) -> RetrieveQuery:
    return RetrieveQuery(
        user_id=request.user_id,
        k=int(request.k),
        request_id=request.request_id,
        exclude_ids=np.asarray(request.exclude_ids, dtype=np.int64),
        user_features=np.asarray(request.user_features, dtype=np.float32),
        neighbor_ids=np.asarray(request.neighbor_ids, dtype=np.int64),
        model_name=request.model.name,
        model_version=request.model.version,
        attributes=dict(request.attributes),
    )


class RetrieverServicer(retrieval_pb2_grpc.RetrieverServicer):
    def __init__(self, dataplane: RetrievalDataPlane) -> None:
        self._dataplane = dataplane

    async def Retrieve(  # noqa: N802 (gRPC method name)
        self, request: retrieval_pb2.RetrieveRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.RetrieveResponse:
        result = await self._dataplane.retrieve(query_from_grpc(request))
        return retrieval_pb2.RetrieveResponse(
            request_id=result.request_id,
            candidate_ids=result.candidate_ids.tolist(),
            scores=result.scores.tolist(),
            model=common_pb2.ModelRef(name=result.model[0], version=result.model[1]),
            assignments=[
                common_pb2.Assignment(experiment_key=a.experiment_key, variant_key=a.variant_key,
                                      variation_id=a.variation_id, stage=a.stage, layer=a.layer)
                for a in result.assignments
            ],
        )

    async def ListModels(  # noqa: N802 (gRPC method name)
        self, request: retrieval_pb2.ListModelsRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.ListModelsResponse:
        served = self._dataplane.served()
        response = retrieval_pb2.ListModelsResponse(
            models=[common_pb2.ModelRef(name=name, version=version) for name, version in served.models],
            max_k=served.max_k,
        )
        if served.default is not None:
            response.default_model.CopyFrom(common_pb2.ModelRef(name=served.default[0], version=served.default[1]))
        return response
