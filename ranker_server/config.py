"""Server settings: one validated pydantic model built from the command line (see ``__main__``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from analytics.kafka.checks import bootstrap_problem, topic_problem
from grpc_serving import target_problem


class BatchingSettings(BaseModel):
    """Micro-batching per (model version, variant), after Triton's dynamic batcher."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_batch_rows: int = Field(2048, ge=1, description="most candidate rows in one ONNX Runtime call")
    max_delay_ms: float = Field(
        0.0,
        ge=0.0,
        description="how long a batch waits for more requests; 0 = take what queued while the previous batch ran",
    )
    max_queue_rows: int = Field(
        65536, ge=1, description="rows waiting per model version before RESOURCE_EXHAUSTED"
    )


class RuntimeSettings(BaseModel):
    """ONNX Runtime session options. Defaults chosen by measurement (benchmarks/results/ranker.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="0 = the available cores (divided among --workers); with --spinning alone, a run that has "
        "ONNX Runtime to itself gets them all and concurrent runs divide them among --inference-threads",
    )
    inter_op_threads: int = Field(1, ge=1)
    spinning: Literal["off", "alone", "on"] = Field(
        "alone",
        description="ORT pool threads spin-wait for work during a run (never between runs): 'alone' only in runs "
        "that have ONNX Runtime to themselves (a second, spinning CPU session) while such runs measure faster "
        "there than on the sleeping one (inference.LoneRunChooser; mtrank_inference_lone_runs_total{session} "
        "counts its picks), 'on' in every run",
    )
    inference_threads: int = Field(2, ge=1, description="executor threads calling session.run concurrently")
    split_rows: int = Field(
        128,
        ge=0,
        description="with --spinning alone on CPU, a run of at least this many rows is scored as "
        "--inference-threads parts handed to the executor at once, each on its share of the intra-op "
        "threads, instead of as one run over all of them (inference.OnnxRanker); 0 = never",
    )
    lone_runs: Literal["loop", "executor"] = Field(
        "executor",
        description="where a run alone in the process goes while calls arrive one at a time "
        "(ranker_server.traffic): an executor thread, as every other run, or the event loop's own thread (no "
        "hand-offs: -0.03 to -0.40 ms p50 at concurrency 1 with one run per call; with --split-rows its part "
        "of a split run, 0.08-0.18 ms slower than all parts in the executor)",
    )
    factored_max_mb: int = Field(
        1024,
        ge=0,
        description="memory for a version's precomputed item parts (its factored graph, models.factored) on CPU; "
        "a version whose parts need more, or 0, scores Rank with its package graph",
    )
    golden_rtol: float = 1e-3
    golden_atol: float = 1e-4
    warmup_rows: tuple[int, ...] = (1, 64, 512)


class ServerSettings(BaseModel):
    """Everything ``python -m ranker_server`` can be told; ``extra="forbid"`` makes typos fail loudly, and no
    duration is infinite or NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    repository: Path
    experiments: Path
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="None = no metrics endpoint, 0 = any free port (one per worker)"
    )
    retrieval: str | None = Field(None, description="HOST:PORT of the retrieval service")
    retrieval_tls_ca: Path | None = Field(None, description="CA bundle: call retrieval over TLS, verified with it")
    retrieval_token_file: Path | None = Field(None, description="bearer token sent to retrieval")
    retrieve_k: int = Field(200, ge=1)
    retrieval_timeout_s: float = Field(1.0, gt=0)
    retrieval_probe_interval_s: float = Field(
        2.0, gt=0, description="how often the health of the retrieval path is checked (ListModels)"
    )
    kafka: str | None = Field(None, description="bootstrap servers for exposure events")
    exposure_topic: str = "mtrank.exposures"
    exposure_buffer: int = Field(10000, ge=1)
    workers: int = Field(1, ge=1)
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="uvloop: 0.3-0.6 ms less per request than asyncio's loop (benchmarks/results/ranker.md)"
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token_file: Path | None = None
    open_inference: bool = Field(
        True, description="also serve inference.GRPCInferenceService (KServe v2 / Triton) for every loaded version"
    )
    max_candidates: int = Field(5000, ge=1)
    default_timeout_s: float = Field(5.0, gt=0, description="deadline applied when the client sets none")
    poll_interval_s: float = Field(5.0, gt=0)
    grace_s: float = Field(10.0, ge=0, description="how long shutdown waits for in-flight requests")
    not_serving_delay_s: float = Field(
        1.0, ge=0, description="shutdown: report NOT_SERVING this long, still serving, so balancers move away"
    )
    batching: BatchingSettings = BatchingSettings()
    runtime: RuntimeSettings = RuntimeSettings()

    @field_validator("repository")
    @classmethod
    def _a_folder(cls, path: Path) -> Path:
        # else every model would be reported missing from the experiment config, one line each
        if not path.is_dir():
            raise ValueError("not a folder" if path.exists() else "no such folder")
        return path

    @field_validator("retrieval")
    @classmethod
    def _a_target(cls, target: str | None) -> str | None:
        problem = None if target is None else target_problem(target)
        if problem is not None:  # gRPC dials a target without a port on 443, a port past 65535 modulo 65536
            raise ValueError(problem)
        return target

    @field_validator("kafka")
    @classmethod
    def _a_bootstrap_list(cls, bootstrap: str | None) -> str | None:
        problem = None if bootstrap is None else bootstrap_problem(bootstrap)
        if problem is not None:
            raise ValueError(problem)
        return bootstrap

    @field_validator("exposure_topic")
    @classmethod
    def _a_topic(cls, topic: str) -> str:
        problem = topic_problem(topic)
        if problem is not None:
            raise ValueError(problem)
        return topic

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key must be given together")
        return self
