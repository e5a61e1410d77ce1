"""Open Inference Protocol (KServe v2 / Triton) on the ranker's model versions, free of transport.

A client built for Triton or KServe calls one loaded model version with the graph's own tensors (``sparse``
INT64 [B, S], ``dense`` FP32 [B, D]) and gets ``logits`` FP32 [B, T] back: no experiment assignment, no
exposure event, no item table. The rows go through the same checks as Rank's (widths, NaN/infinity, row
limit; out-of-range sparse ids map to the out-of-vocabulary 0), the version's micro-batcher and the same
metrics, labelled with the variant ``infer``. ``open_inference_servicer`` converts protobuf at the edge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ranker_server import metrics
from ranker_server.errors import DeadlineExceeded, InvalidInput, ModelNotFound
from ranker_server.features import in_vocab
from ranker_server.inference import GraphRows
from ranker_server.model_repository import LoadedModel, ModelRepository

INFER_VARIANT = "infer"  # metrics label and batcher of direct calls: never batched with a Rank variant
PLATFORM = "onnxruntime_onnx"  # Triton's name for the ONNX Runtime backend
SPARSE, DENSE, LOGITS = "sparse", "dense", "logits"
INT64, FP32 = "INT64", "FP32"


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as ModelMetadata describes it; -1 is a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Tensor:
    """A decoded input or output tensor; ``data`` already has ``shape``."""

    name: str
    datatype: str
    data: np.ndarray


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class InferQuery:
    model_name: str
    inputs: tuple[Tensor, ...]  # in request order: errors name ``inputs[i]``
    model_version: str = ""  # empty: the highest loaded version
    request_id: str = ""
    outputs: tuple[str, ...] = ()  # requested output names; empty: every output


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str
    request_id: str
    outputs: tuple[Tensor, ...]


def _version_order(version: str) -> tuple[int, int, str]:
    """Numeric versions by value, above any non-numeric one (compared as text); "01" and "1" by text.

    ASCII digits only: ``"²".isdigit()`` is true and ``int("²")`` raises, which failed every request for the
    model's default version while such a folder was served.
    """
    numeric = version.isascii() and version.isdigit()
    return (1, int(version), version) if numeric else (0, 0, version)


def tensor_specs(model: LoadedModel) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's inputs and output as ModelMetadata lists them (widths from the package's layout)."""
    layout = model.package.layout
    inputs = (
        TensorSpec(SPARSE, INT64, (-1, layout.user_sparse + layout.item_sparse)),
        TensorSpec(DENSE, FP32, (-1, layout.user_dense + layout.item_dense)),
    )
    return inputs, (TensorSpec(LOGITS, FP32, (-1, len(model.task_names))),)


class InferenceDataPlane:
    """ServerLive/Ready, ModelReady, ModelMetadata and ModelInfer over the repository's current snapshot."""

    def __init__(self, repository: ModelRepository, max_rows: int) -> None:
        self._repository = repository
        self._max_rows = max_rows
        self.stopping = False  # set by the server when it starts draining: ServerReady turns false

    @staticmethod
    def live() -> bool:
        return True

    def ready(self) -> bool:
        """Every model version the router named at start is loaded, and the server is not draining."""
        return self._repository.loaded and not self.stopping

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self._resolve(name, version, "name")
        except ModelNotFound:
            return False
        return True

    def model_metadata(self, name: str, version: str) -> ModelMetadata:
        """Raises: ModelNotFound: naming the model (and version) this server does not serve."""
        model = self._resolve(name, version, "name")
        inputs, outputs = tensor_specs(model)
        versions = sorted((v for n, v in self._repository.snapshot.models if n == name), key=_version_order)
        return ModelMetadata(name, tuple(versions), PLATFORM, inputs, outputs)

    def _resolve(self, name: str, version: str, field: str) -> LoadedModel:
        """The loaded version, or the highest loaded version of ``name`` when ``version`` is empty.

        Raises:
            ModelNotFound: naming ``field``, the model and what is served.
        """
        models = self._repository.snapshot.models
        if version:
            model = models.get((name, version))
        else:
            versions = [v for n, v in models if n == name]
            model = models[(name, max(versions, key=_version_order))] if versions else None
        if model is None:
            served = ", ".join(sorted(f"{n}/{v}" for n, v in models)) or "none"
            wanted = f"{name}/{version}" if version else name
            raise ModelNotFound(f"{field}: {wanted} is not served here (served: {served})")
        return model

    async def infer(self, query: InferQuery, deadline: float | None = None) -> InferResult:
        """Score the query's rows with one model version through its ``infer`` batcher.

        Args:
            query: decoded tensors, in request order.
            deadline: absolute event-loop time by which the answer is due; None for no deadline.

        Raises:
            RankerError: InvalidInput naming the field, ModelNotFound, QueueFull, DeadlineExceeded, ...
        """
        started = time.perf_counter()
        if not query.model_name:
            self.rejected("InvalidInput")
            raise InvalidInput("model_name", "must be non-empty")
        try:
            model = self._resolve(query.model_name, query.model_version, "model_name")
        except ModelNotFound:
            self.rejected("ModelNotFound")
            raise
        key = model.key
        series = metrics.variant_series(*key, INFER_VARIANT)
        with metrics.accounted(series, (*key, INFER_VARIANT), started):
            sparse, dense = self._rows(model, query)
            with model.use():
                try:
                    async with asyncio.timeout_at(deadline):
                        logits, timing = await model.batcher(INFER_VARIANT).infer(GraphRows(sparse, dense), deadline)
                except TimeoutError:
                    raise DeadlineExceeded("deadline passed before the rows were scored") from None
            series.queue.observe(timing.queue_s)
            series.compute.observe(timing.compute_s)
        return InferResult(key[0], key[1], query.request_id, (Tensor(LOGITS, FP32, logits),))

    @staticmethod
    def rejected(reason: str) -> None:
        """Count a request refused before it reached a served model (no model labels: names come from clients)."""
        metrics.REQUEST_FAILURE.labels("", "", INFER_VARIANT, reason).inc()

    def _rows(self, model: LoadedModel, query: InferQuery) -> tuple[np.ndarray, np.ndarray]:
        """The ``sparse`` / ``dense`` arrays checked against the model's tensors, as Rank checks its rows.

        Raises:
            InvalidInput: naming ``inputs[i].<field>`` or ``outputs[i].name``.
        """
        specs, _ = tensor_specs(model)
        expected = {spec.name: spec for spec in specs}
        for i, name in enumerate(query.outputs):
            if name != LOGITS:
                raise InvalidInput(f"outputs[{i}].name", f"unknown output {name!r}; the model has {LOGITS!r}")
        found: dict[str, np.ndarray] = {}
        rows: int | None = None
        for i, tensor in enumerate(query.inputs):
            spec = expected.get(tensor.name)
            if spec is None:
                raise InvalidInput(f"inputs[{i}].name", f"unknown input {tensor.name!r}; {_describe(specs)}")
            if tensor.name in found:
                raise InvalidInput(f"inputs[{i}].name", f"input {tensor.name!r} given twice")
            if tensor.datatype != spec.datatype:
                raise InvalidInput(
                    f"inputs[{i}].datatype", f"{tensor.name} is {spec.datatype}, got {tensor.datatype}"
                )
            data = tensor.data
            if data.ndim != 2 or data.shape[1] != spec.shape[1]:
                raise InvalidInput(
                    f"inputs[{i}].shape",
                    f"{tensor.name} has shape {list(data.shape)}, the model takes [-1, {spec.shape[1]}]",
                )
            if rows is not None and data.shape[0] != rows:
                raise InvalidInput(f"inputs[{i}].shape", f"{data.shape[0]} rows, the other input has {rows}")
            rows = data.shape[0]
            found[tensor.name] = data
        width = expected[DENSE].shape[1]
        if DENSE not in found and width == 0 and SPARSE in found:  # a model without dense features
            found[DENSE] = np.zeros((len(found[SPARSE]), 0), np.float32)
        missing = [spec.name for spec in specs if spec.name not in found]
        if missing:
            raise InvalidInput("inputs", f"missing {', '.join(missing)}; {_describe(specs)}")
        sparse, dense = found[SPARSE], found[DENSE]
        index = [i for i, t in enumerate(query.inputs) if t.name == SPARSE][0]
        if not len(sparse):
            raise InvalidInput(f"inputs[{index}].shape", "needs at least one row")
        if len(sparse) > self._max_rows:
            raise InvalidInput(
                f"inputs[{index}].shape", f"has {len(sparse)} rows, the server accepts at most {self._max_rows}"
            )
        if dense.size and not np.isfinite(dense).all():
            index = [i for i, t in enumerate(query.inputs) if t.name == DENSE][0]
            raise InvalidInput(f"inputs[{index}].contents", "dense contains NaN or infinity")
        return in_vocab(sparse, model.package.layout.vocab_sizes), np.ascontiguousarray(dense)


def _describe(specs: Sequence[TensorSpec]) -> str:
    return "the model takes " + ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in specs)

