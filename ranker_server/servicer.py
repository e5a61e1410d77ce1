"""The Ranker gRPC servicer: transport only. Protobuf stops here; the data plane sees plain types."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from grpc import aio

from proto import common_pb2, ranking_pb2, ranking_pb2_grpc
from ranker_server.dataplane import RankDataPlane, RankQuery, RankResult

_NO_INTS = np.zeros(0, np.int64)
_NO_FLOATS = np.zeros(0, np.float32)
_NO_INTS.flags.writeable = _NO_FLOATS.flags.writeable = False  # shared by every request


def _array(values: Sequence[float], dtype: type, empty: np.ndarray) -> np.ndarray:
    # Usually empty (candidate features come from the item table): skip numpy for those.
    return np.asarray(values, dtype) if len(values) else empty


def query_from_proto(request: ranking_pb2.RankRequest) -> RankQuery:
    return RankQuery(
        request_id=request.request_id,
        user_id=request.user_id,
        attributes=dict(request.attributes) if request.attributes else {},  # usually empty: -13 us after ORT
        user_sparse=_array(request.user_sparse, np.int64, _NO_INTS),
        user_dense=_array(request.user_dense, np.float32, _NO_FLOATS),
        candidate_ids=_array(request.candidate_ids, np.int64, _NO_INTS),
        candidate_sparse=_array(request.candidate_sparse, np.int64, _NO_INTS),
        candidate_dense=_array(request.candidate_dense, np.float32, _NO_FLOATS),
        top_k=request.top_k,
        retrieve_k=request.retrieve_k,
        model=(request.model.name, request.model.version) if request.model.name or request.model.version else None,
    )


def result_to_proto(result: RankResult) -> ranking_pb2.RankResponse:
    response = ranking_pb2.RankResponse(
        request_id=result.request_id,
        candidate_ids=result.candidate_ids.tolist(),
        task_names=result.task_names,
        task_scores=[ranking_pb2.TaskScores(scores=row.tolist()) for row in result.task_scores],
        merged_scores=result.merged_scores.tolist(),
        assignments=[
            common_pb2.Assignment(
                experiment_key=a.experiment_key,
                variant_key=a.variant_key,
                variation_id=a.variation_id,
                stage=a.stage,
                layer=a.layer,
            )
            for a in result.assignments
        ],
    )
    if result.arms:  # interleaved: each position names its arm, the arms name their models
        response.teams.extend(result.teams.tolist())
        for arm in result.arms:
            response.arms.add(key=arm.key, model=common_pb2.ModelRef(name=arm.model[0], version=arm.model[1]))
    else:
        response.model.name, response.model.version = result.model
    if result.retrieval_model is not None:
        response.retrieval_model.CopyFrom(
            common_pb2.ModelRef(name=result.retrieval_model[0], version=result.retrieval_model[1])
        )
    return response


class RankerServicer(ranking_pb2_grpc.RankerServicer):
    """Parses, calls the data plane with the call's deadline, builds the response."""

    def __init__(self, dataplane: RankDataPlane, default_timeout_s: float) -> None:
        self._dataplane = dataplane
        self._default_timeout_s = default_timeout_s

    async def Rank(  # noqa: N802 (gRPC method name)
        self, request: ranking_pb2.RankRequest, context: aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        remaining = context.time_remaining()
        timeout = self._default_timeout_s if remaining is None else remaining
        deadline = asyncio.get_running_loop().time() + timeout
        result = await self._dataplane.rank(query_from_proto(request), deadline)
        return result_to_proto(result)
