"""The Open Inference Protocol endpoint: tensor decoding at the edge, the data plane in-process, and the
service over a real channel (validation codes naming the field, metrics, batching, health, reflection)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from proto import inference_pb2, inference_pb2_grpc
from ranker_server.config import BatchingSettings, RuntimeSettings
from ranker_server.errors import DeadlineExceeded, InvalidInput, ModelNotFound
from ranker_server.model_repository import ModelRepository
from ranker_server.open_inference import INFER_VARIANT, InferenceDataPlane, InferQuery, Tensor, _version_order
from ranker_server.open_inference_servicer import query_from_proto, result_to_proto, tensor_from_proto
from ranker_server.package import read_package
from ranker_server.server import INFERENCE_SERVICE, RankerServer
from tests.ranker_server.conftest import FakeRouter, MutableSource, code_of, make_settings
from tests.ranker_server.rank_packages import FEATURES, N_ITEMS

SPARSE_WIDTH = len(FEATURES["sparse"])
DENSE_WIDTH = len(FEATURES["dense"])


def rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sparse = np.stack([rng.integers(0, 20, n), rng.integers(0, 20, n), rng.integers(0, N_ITEMS, n)], 1)
    return sparse.astype(np.int64), rng.normal(size=(n, DENSE_WIDTH)).astype(np.float32)


def infer_request(
    sparse: np.ndarray, dense: np.ndarray, model: str = "tiny", version: str = "", raw: bool = True, **fields
) -> inference_pb2.ModelInferRequest:
    request = inference_pb2.ModelInferRequest(model_name=model, model_version=version, **fields)
    for name, datatype, data in (("sparse", "INT64", sparse), ("dense", "FP32", dense)):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=data.shape)
        if raw:
            request.raw_input_contents.append(data.tobytes())
        elif datatype == "INT64":
            tensor.contents.int64_contents.extend(data.ravel().tolist())
        else:
            tensor.contents.fp32_contents.extend(data.ravel().tolist())
    return request


def expected_logits(repository: Path, version: str, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(read_package(repository / "tiny" / version).onnx_path))
    return session.run(["logits"], {"sparse": sparse, "dense": dense})[0]


# ---------------------------------------------------------------- decoding at the edge (no server)


def test_raw_and_typed_contents_decode_to_the_same_tensors() -> None:
    sparse, dense = rows(5)
    raw, typed = query_from_proto(infer_request(sparse, dense)), query_from_proto(infer_request(sparse, dense, raw=False))
    for a, b in zip(raw.inputs, typed.inputs, strict=True):
        assert a.name == b.name and a.datatype == b.datatype
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(raw.inputs[0].data, sparse)
    np.testing.assert_array_equal(raw.inputs[1].data, dense)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.inputs[0].__setattr__("datatype", "STRING"), "inputs[0].datatype"),
        (lambda r: r.inputs[1].shape.__setitem__(0, -1), "inputs[1].shape"),
        (lambda r: r.raw_input_contents.__setitem__(1, b"\0" * 7), "raw_input_contents[1]"),
        (lambda r: r.raw_input_contents.pop(), "raw_input_contents"),
        (lambda r: r.inputs[0].contents.int64_contents.append(1), "inputs[0].contents"),
        (lambda r: r.inputs[0].shape.__setitem__(0, 10**15), "raw_input_contents[0]"),
        (lambda r: (r.inputs[0].shape.extend([2**40, 2**40]), r.inputs[0].shape.__setitem__(0, 0),
                    r.raw_input_contents.__setitem__(0, b"")), "inputs[0].shape"),  # numpy refuses this shape
        (lambda r: r.inputs[0].shape.extend([1] * 63), "inputs[0].shape"),  # 65 dimensions: over numpy's 64
        # Triton extensions, absent from ServerMetadata: refused rather than silently ignored.
        (lambda r: r.outputs.add(name="logits").parameters["classification"].__setattr__("int64_param", 1),
         "outputs[0].parameters"),
        (lambda r: r.inputs[1].parameters["shared_memory_region"].__setattr__("string_param", "shm"),
         "inputs[1].parameters"),
        # names the answer may quote are bounded like every name of the contract (proto.limits: 256 bytes)
        (lambda r: r.__setattr__("model_name", "m" * 257), "model_name"),
        (lambda r: r.__setattr__("model_version", "9" * 257), "model_version"),
        (lambda r: r.inputs[1].__setattr__("name", "d" * 257), "inputs[1].name"),
        (lambda r: r.outputs.add(name="é" * 129), "outputs[0].name"),  # 258 bytes in UTF-8
    ],
)
def test_malformed_tensors_name_the_field(mutate, field: str) -> None:
    request = infer_request(*rows(3))
    mutate(request)
    with pytest.raises(InvalidInput) as info:
        query_from_proto(request)
    assert info.value.field == field


def test_typed_contents_of_the_wrong_length_name_the_input() -> None:
    request = infer_request(*rows(3), raw=False)
    request.inputs[1].contents.fp32_contents.pop()
    with pytest.raises(InvalidInput) as info:
        tensor_from_proto(1, request.inputs[1], None)
    assert info.value.field == "inputs[1].contents" and "needs 9" in info.value.reason


def test_outputs_travel_as_raw_little_endian_bytes() -> None:
    from ranker_server.open_inference import InferResult

    logits = np.arange(6, dtype=np.float32).reshape(3, 2)
    response = result_to_proto(InferResult("tiny", "2", "r-1", (Tensor("logits", "FP32", logits),)))
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("logits", "FP32", [3, 2])
    decoded = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(3, 2)
    np.testing.assert_array_equal(decoded, logits)
    assert (response.model_name, response.model_version, response.id) == ("tiny", "2", "r-1")


# ---------------------------------------------------------------- the data plane in-process


@pytest.fixture
async def dataplane(repository: Path):
    executor = ThreadPoolExecutor(2)
    models = ModelRepository(
        repository, MutableSource(FakeRouter()), RuntimeSettings(), BatchingSettings(), executor
    )
    await models.start()
    try:
        yield InferenceDataPlane(models, max_rows=50)
    finally:
        await models.close()
        executor.shutdown()


def query(sparse: np.ndarray, dense: np.ndarray, **fields) -> InferQuery:
    values = {"model_name": "tiny", "inputs": (Tensor("sparse", "INT64", sparse), Tensor("dense", "FP32", dense))}
    return InferQuery(**(values | fields))


async def test_infer_scores_the_named_version_and_the_highest_by_default(dataplane, repository) -> None:
    sparse, dense = rows(7)
    for version, expected_version in (("1", "1"), ("2", "2"), ("", "2")):
        result = await dataplane.infer(query(sparse, dense, model_version=version, request_id="x"))
        assert (result.model_version, result.request_id) == (expected_version, "x")
        (logits,) = result.outputs
        np.testing.assert_allclose(
            logits.data, expected_logits(repository, expected_version, sparse, dense), rtol=1e-5, atol=1e-6
        )


async def test_out_of_range_sparse_ids_map_to_the_out_of_vocabulary_row(dataplane, repository) -> None:
    sparse, dense = rows(4)
    wild = sparse.copy()
    wild[:, 2] = [10**9, -5, 100, 99]  # vocabulary 100: the first three are out of range
    zeroed = sparse.copy()
    zeroed[:, 2] = [0, 0, 0, 99]
    result = await dataplane.infer(query(wild, dense, model_version="1"))
    expected = expected_logits(repository, "1", zeroed, dense)
    np.testing.assert_allclose(result.outputs[0].data, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model_name": ""}, "model_name"),
        ({"outputs": ("scores",)}, "outputs[0].name"),
        ({"inputs": (Tensor("sparse", "INT64", rows(2)[0]),)}, "inputs"),
        ({"inputs": (Tensor("user", "INT64", rows(2)[0]),)}, "inputs[0].name"),
        ({"inputs": (Tensor("sparse", "INT32", rows(2)[0].astype(np.int32)),)}, "inputs[0].datatype"),
        ({"inputs": (Tensor("sparse", "INT64", rows(2)[0]), Tensor("dense", "FP32", rows(3)[1]))}, "inputs[1].shape"),
        ({"inputs": (Tensor("sparse", "INT64", rows(2)[0][:, :2]),)}, "inputs[0].shape"),
        ({"inputs": (Tensor("sparse", "INT64", rows(2)[0]),) * 2}, "inputs[1].name"),
        ({"inputs": (Tensor("sparse", "INT64", rows(51)[0]), Tensor("dense", "FP32", rows(51)[1]))}, "inputs[0].shape"),
        ({"inputs": (Tensor("sparse", "INT64", rows(0)[0]), Tensor("dense", "FP32", rows(0)[1]))}, "inputs[0].shape"),
        (
            {"inputs": (Tensor("dense", "FP32", np.full((1, DENSE_WIDTH), np.inf, np.float32)), Tensor("sparse", "INT64", rows(1)[0]))},
            "inputs[0].contents",
        ),
    ],
)
async def test_invalid_queries_name_the_field(dataplane, fields: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        await dataplane.infer(query(*rows(2), **fields))
    assert info.value.field == field


async def test_unknown_models_and_versions_are_not_found(dataplane) -> None:
    for name, version in (("nope", ""), ("tiny", "9")):
        with pytest.raises(ModelNotFound, match=r"model_name: .* is not served here \(served: tiny/1, tiny/2\)"):
            await dataplane.infer(query(*rows(2), model_name=name, model_version=version))
        assert not dataplane.model_ready(name, version)
    assert dataplane.model_ready("tiny", "") and dataplane.model_ready("tiny", "1")


async def test_metadata_lists_versions_and_the_graph_tensors(dataplane) -> None:
    meta = dataplane.model_metadata("tiny", "")
    assert meta.versions == ("1", "2") and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
        ("sparse", "INT64", (-1, SPARSE_WIDTH)),
        ("dense", "FP32", (-1, DENSE_WIDTH)),
    ]
    assert [(t.name, t.datatype, t.shape) for t in meta.outputs] == [("logits", "FP32", (-1, 2))]
    assert dataplane.live() and dataplane.ready()
    dataplane.stopping = True
    assert not dataplane.ready()


class _Context:
    """The one thing the servicer asks of a grpc.aio context: the call's remaining time."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


async def test_servicer_in_process_parses_delegates_and_builds(dataplane, repository) -> None:
    from ranker_server.open_inference_servicer import OpenInferenceServicer

    servicer = OpenInferenceServicer(dataplane, default_timeout_s=5.0)
    sparse, dense = rows(4)
    response = await servicer.ModelInfer(infer_request(sparse, dense, version="2", id="q"), _Context(None))
    assert (response.model_version, response.id, list(response.outputs[0].shape)) == ("2", "q", [4, 2])
    logits = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(4, 2)
    np.testing.assert_allclose(logits, expected_logits(repository, "2", sparse, dense), rtol=1e-5, atol=1e-6)
    meta = await servicer.ModelMetadata(inference_pb2.ModelMetadataRequest(name="tiny", version="1"), _Context(None))
    assert list(meta.versions) == ["1", "2"] and [list(t.shape) for t in meta.inputs] == [[-1, 3], [-1, 3]]
    ready = await servicer.ModelReady(inference_pb2.ModelReadyRequest(name="nope"), _Context(None))
    assert not ready.ready
    with pytest.raises(InvalidInput, match="^name: must be non-empty"):
        await servicer.ModelMetadata(inference_pb2.ModelMetadataRequest(), _Context(None))
    bad = infer_request(sparse, dense)
    del bad.raw_input_contents[1]
    with pytest.raises(InvalidInput, match="^raw_input_contents: has 1 entries for 2 inputs"):
        await servicer.ModelInfer(bad, _Context(None))
    with pytest.raises(DeadlineExceeded):  # the call's own deadline, from its context, reaches the batcher
        await servicer.ModelInfer(infer_request(sparse, dense), _Context(0.0))


# ---------------------------------------------------------------- over a real channel



@pytest.fixture
async def served(repository: Path):
    batching = BatchingSettings(max_batch_rows=256, max_delay_ms=5.0)
    server = RankerServer(make_settings(repository, batching=batching), MutableSource(FakeRouter()))
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, channel, inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(grace_s=1.0)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.integration
async def test_model_infer_over_grpc_batches_and_counts_like_rank(served, repository) -> None:
    _, channel, stub = served
    labels = {"model": "tiny", "version": "1", "variant": INFER_VARIANT}
    before = {
        "success": sample("mtrank_inference_request_success_total", **labels),
        "duration": sample("mtrank_inference_request_duration_seconds_count", **labels),
        "execs": sample("mtrank_inference_exec_count_total", model="tiny", version="1"),
        "calls": sample("mtrank_requests_total", method="ModelInfer", code="OK"),
    }
    inputs = [rows(5, seed) for seed in range(8)]
    responses = await asyncio.gather(
        *(stub.ModelInfer(infer_request(s, d, version="1", id=f"r{i}")) for i, (s, d) in enumerate(inputs))
    )
    for i, ((sparse, dense), response) in enumerate(zip(inputs, responses, strict=True)):
        assert response.id == f"r{i}" and response.model_version == "1"
        logits = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(tuple(response.outputs[0].shape))
        np.testing.assert_allclose(logits, expected_logits(repository, "1", sparse, dense), rtol=1e-5, atol=1e-6)
    assert sample("mtrank_inference_request_success_total", **labels) - before["success"] == 8
    assert sample("mtrank_inference_request_duration_seconds_count", **labels) - before["duration"] == 8
    assert sample("mtrank_requests_total", method="ModelInfer", code="OK") - before["calls"] == 8
    execs = sample("mtrank_inference_exec_count_total", model="tiny", version="1") - before["execs"]
    assert 1 <= execs < 8, "concurrent calls within max_delay_ms share ONNX Runtime executions"


@pytest.mark.integration
async def test_errors_over_grpc_carry_the_status_and_the_field(served) -> None:
    _, _, stub = served
    failed = sample("mtrank_inference_request_failure_total", model="", version="", variant=INFER_VARIANT, reason="InvalidInput")
    codes = ("INVALID_ARGUMENT", "NOT_FOUND")
    calls = {code: sample("mtrank_requests_total", method="ModelInfer", code=code) for code in codes}
    bad = infer_request(*rows(2))
    bad.raw_input_contents[0] = b"\0"
    cases = [
        (bad, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[0]"),
        (infer_request(*rows(2), model="nope"), grpc.StatusCode.NOT_FOUND, "model_name: nope"),
        (infer_request(*rows(2), outputs=[{"name": "x"}]), grpc.StatusCode.INVALID_ARGUMENT, "outputs[0].name"),
    ]
    for request, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(request)
        assert code_of(info.value) == code and text in info.value.details()
    after = sample("mtrank_inference_request_failure_total", model="", version="", variant=INFER_VARIANT, reason="InvalidInput")
    assert after - failed == 1
    counted = {c: sample("mtrank_requests_total", method="ModelInfer", code=c) - calls[c] for c in codes}
    assert counted == {"INVALID_ARGUMENT": 2, "NOT_FOUND": 1}  # each call once, by the code it ended with
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="tiny", version="7"))
    assert code_of(info.value) == grpc.StatusCode.NOT_FOUND and info.value.details().startswith("name: tiny/7")
    # a probe, not a request: uncounted
    assert sample("mtrank_requests_total", method="ModelMetadata", code="NOT_FOUND") == 0


LONGER_THAN_GRPC_METADATA = 100_000
"""Bytes of a name that, quoted in a status message, exceed gRPC's metadata limit (8 KiB soft, 16 KiB hard):
the client then gets RESOURCE_EXHAUSTED "Stream removed" instead of the server's status and message."""


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "message", "field"),
    [
        ("ModelInfer", infer_request(*rows(1), model="m" * LONGER_THAN_GRPC_METADATA), "model_name"),
        (
            "ModelInfer",
            infer_request(*rows(1), outputs=[{"name": "o" * LONGER_THAN_GRPC_METADATA}]),
            "outputs[0].name",
        ),
        ("ModelMetadata", inference_pb2.ModelMetadataRequest(name="m" * LONGER_THAN_GRPC_METADATA), "name"),
    ],
)
async def test_names_too_long_to_quote_are_invalid_argument_naming_the_field(
    served, method: str, message: object, field: str
) -> None:
    """The answers quote model, input and output names (``model_name: nope is not served here``); a name of
    100 kB made the status message too large to reach the client."""
    _, _, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(stub, method)(message)
    assert code_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details() == f"{field}: is longer than 256 bytes (UTF-8)"


@pytest.mark.integration
async def test_liveness_readiness_metadata_health_and_reflection(served) -> None:
    server, channel, stub = served
    assert (await stub.ServerLive(inference_pb2.ServerLiveRequest())).live
    assert (await stub.ServerReady(inference_pb2.ServerReadyRequest())).ready
    assert (await stub.ModelReady(inference_pb2.ModelReadyRequest(name="tiny", version="2"))).ready
    assert not (await stub.ModelReady(inference_pb2.ModelReadyRequest(name="tiny", version="3"))).ready
    meta = await stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="tiny"))
    assert list(meta.versions) == ["1", "2"] and [t.name for t in meta.inputs] == ["sparse", "dense"]
    assert (await stub.ServerMetadata(inference_pb2.ServerMetadataRequest())).name == "mtrank-ranker"
    health = health_pb2_grpc.HealthStub(channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = [r async for r in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
    assert INFERENCE_SERVICE in {s.name for s in answer.list_services_response.service}


@pytest.mark.integration
async def test_open_inference_can_be_turned_off(repository: Path) -> None:
    server = RankerServer(make_settings(repository, open_inference=False), MutableSource(FakeRouter()))
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await inference_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(inference_pb2.ServerLiveRequest())
        assert code_of(info.value) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(grace_s=1.0)


def test_versions_order_by_number_then_text_and_odd_digits_are_text() -> None:
    # "²" is a digit to str.isdigit and not to int(): it ordered as a number and raised ValueError
    versions = ["10", "2", "²", "b", "01", "1", "a"]
    assert sorted(versions, key=_version_order) == ["a", "b", "²", "01", "1", "2", "10"]
