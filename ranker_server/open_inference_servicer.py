"""``inference.GRPCInferenceService`` servicer: transport only. Tensors are decoded here (raw little-endian
bytes or typed contents, as KServe's ``InferRequest.from_grpc`` does) and encoded back as raw contents, the
way Triton answers; ``open_inference.InferenceDataPlane`` does the rest.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from importlib import metadata

import numpy as np
from grpc import aio

from proto import inference_pb2, inference_pb2_grpc, limits
from ranker_server.errors import InvalidInput
from ranker_server.open_inference import InferenceDataPlane, InferQuery, InferResult, Tensor, TensorSpec

SERVER_NAME = "mtrank-ranker"

# Datatypes of the protocol that have a numpy type (BYTES has none and no ranking graph takes it).
_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(t).newbyteorder("<")
    for name, t in (
        ("BOOL", np.bool_),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
    )
}
# The InferTensorContents field of each datatype (FP16 travels only as raw bytes).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

# Parameters of Triton extensions that change what a tensor holds or where its data travels. ServerMetadata lists
# no extension here; ignoring them would answer plain logits, or leave a shared-memory region unwritten.
_EXTENSION_PARAMETERS = ("classification", "shared_memory_region")


def _server_version() -> str:
    try:
        return metadata.version("mtrank")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def tensor_from_proto(
    index: int, tensor: inference_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> Tensor:
    """Decode input ``index`` from ``raw`` (its raw_input_contents entry) or from its typed contents.

    Raises:
        InvalidInput: naming ``inputs[i].datatype``, ``inputs[i].shape``, ``inputs[i].contents`` or
            ``raw_input_contents[i]``.
    """
    field = f"inputs[{index}]"
    dtype = _DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(
            f"{field}.datatype", f"{tensor.datatype!r} is not supported (supported: {', '.join(_DTYPES)})"
        )
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{field}.shape", f"{list(shape)} has a negative dimension")
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInput(f"{field}.contents", "data given both in contents and in raw_input_contents")
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"raw_input_contents[{index}]",
                f"has {len(raw)} bytes, {tensor.datatype} {list(shape)} needs {count * dtype.itemsize}",
            )
        data = np.frombuffer(raw, dtype)
    else:
        name = _CONTENTS.get(tensor.datatype)
        if name is None:
            raise InvalidInput(f"{field}.contents", f"{tensor.datatype} data travels in raw_input_contents only")
        values = getattr(tensor.contents, name)
        if len(values) != count:
            raise InvalidInput(
                f"{field}.contents", f"has {len(values)} {name} values, shape {list(shape)} needs {count}"
            )
        data = np.asarray(values, dtype)
    try:
        data = data.reshape(shape)
    except ValueError as exc:  # over numpy's 64 dimensions, or a zero-size shape too large to address
        raise InvalidInput(f"{field}.shape", f"{list(shape)} is not a valid array shape ({exc})") from None
    return Tensor(tensor.name, tensor.datatype, data)


def _refuse_extensions(field: str, parameters: Mapping[str, inference_pb2.InferParameter]) -> None:
    """Raises: InvalidInput: naming ``<field>.parameters`` when they ask for an extension this server lacks."""
    for name in _EXTENSION_PARAMETERS:
        if name in parameters:
            raise InvalidInput(f"{field}.parameters", f"{name!r} needs a Triton extension this server lacks")


def check_names(names: Mapping[str, str]) -> None:
    """Model, version, tensor and datatype names within ``limits.MAX_NAME_BYTES``: errors quote them (an
    unknown model or output), and a status message above gRPC's metadata limit (16 KiB) never reaches the
    client, which gets RESOURCE_EXHAUSTED "Stream removed" instead.

    Raises:
        InvalidInput: naming the first field (``names``: field -> value) that is too long.
    """
    problem = limits.oversized(names, limits.MAX_NAME_BYTES)
    if problem is not None:
        raise InvalidInput(*problem)


def query_from_proto(request: inference_pb2.ModelInferRequest) -> InferQuery:
    """Raises: InvalidInput: naming the field (see ``tensor_from_proto``), a name over the limit
    (``check_names``), or an extension's parameter."""
    names = {"model_name": request.model_name, "model_version": request.model_version}
    for i, tensor in enumerate(request.inputs):
        names[f"inputs[{i}].name"], names[f"inputs[{i}].datatype"] = tensor.name, tensor.datatype
    for i, output in enumerate(request.outputs):
        names[f"outputs[{i}].name"] = output.name
    check_names(names)
    for kind, tensors in (("inputs", request.inputs), ("outputs", request.outputs)):
        for i, tensor in enumerate(tensors):
            _refuse_extensions(f"{kind}[{i}]", tensor.parameters)
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            "raw_input_contents",
            f"has {len(raw)} entries for {len(request.inputs)} inputs: give every input's data there, or none",
        )
    return InferQuery(
        model_name=request.model_name,
        model_version=request.model_version,
        request_id=request.id,
        inputs=tuple(
            tensor_from_proto(i, tensor, raw[i] if raw else None) for i, tensor in enumerate(request.inputs)
        ),
        outputs=tuple(output.name for output in request.outputs),
    )


def result_to_proto(result: InferResult) -> inference_pb2.ModelInferResponse:
    """Outputs as raw little-endian bytes, as Triton answers (clients read them with ``as_numpy``)."""
    response = inference_pb2.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.request_id
    )
    for tensor in result.outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.data.shape)
        response.raw_output_contents.append(tensor.data.astype(_DTYPES[tensor.datatype], copy=False).tobytes())
    return response


def _tensor_metadata(
    specs: tuple[TensorSpec, ...],
) -> list[inference_pb2.ModelMetadataResponse.TensorMetadata]:
    return [
        inference_pb2.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
        for s in specs
    ]


class OpenInferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Each RPC parses, calls the data plane and builds the response; errors go to the interceptor."""

    def __init__(self, dataplane: InferenceDataPlane, default_timeout_s: float) -> None:
        self._dataplane = dataplane
        self._default_timeout_s = default_timeout_s
        self._metadata = inference_pb2.ServerMetadataResponse(name=SERVER_NAME, version=_server_version())

    async def ServerLive(  # noqa: N802 (gRPC method name)
        self, request: inference_pb2.ServerLiveRequest, context: aio.ServicerContext
    ) -> inference_pb2.ServerLiveResponse:
        return inference_pb2.ServerLiveResponse(live=self._dataplane.live())

    async def ServerReady(  # noqa: N802
        self, request: inference_pb2.ServerReadyRequest, context: aio.ServicerContext
    ) -> inference_pb2.ServerReadyResponse:
        return inference_pb2.ServerReadyResponse(ready=self._dataplane.ready())

    async def ModelReady(  # noqa: N802
        self, request: inference_pb2.ModelReadyRequest, context: aio.ServicerContext
    ) -> inference_pb2.ModelReadyResponse:
        if not request.name:
            raise InvalidInput("name", "must be non-empty")
        return inference_pb2.ModelReadyResponse(ready=self._dataplane.model_ready(request.name, request.version))

    async def ServerMetadata(  # noqa: N802
        self, request: inference_pb2.ServerMetadataRequest, context: aio.ServicerContext
    ) -> inference_pb2.ServerMetadataResponse:
        return self._metadata

    async def ModelMetadata(  # noqa: N802
        self, request: inference_pb2.ModelMetadataRequest, context: aio.ServicerContext
    ) -> inference_pb2.ModelMetadataResponse:
        if not request.name:
            raise InvalidInput("name", "must be non-empty")
        check_names({"name": request.name, "version": request.version})
        meta = self._dataplane.model_metadata(request.name, request.version)
        return inference_pb2.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=_tensor_metadata(meta.inputs),
            outputs=_tensor_metadata(meta.outputs),
        )

    async def ModelInfer(  # noqa: N802
        self, request: inference_pb2.ModelInferRequest, context: aio.ServicerContext
    ) -> inference_pb2.ModelInferResponse:
        remaining = context.time_remaining()
        deadline = asyncio.get_running_loop().time() + (
            self._default_timeout_s if remaining is None else remaining
        )
        try:
            query = query_from_proto(request)
        except InvalidInput:
            self._dataplane.rejected("InvalidInput")
            raise
        result = await self._dataplane.infer(query, deadline)
        return result_to_proto(result)
