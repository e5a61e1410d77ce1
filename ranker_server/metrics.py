"""Prometheus metrics, named after Triton's (nv_inference_* -> mtrank_inference_*) where the meaning matches.

Module-level so that several servers in one process (tests) share one registry; with ``--workers N`` each
worker serves its own endpoint on ``metrics_port + worker index``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Enum, Gauge, Histogram

from ranker_server.errors import RankerError

MODEL_LABELS = ("model", "version")
VARIANT_LABELS = ("model", "version", "variant")

# Latency buckets in seconds, from 100 us to 5 s.
_LATENCY = (1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 5.0)

REQUESTS = Counter(
    "mtrank_requests",
    "Rank and ModelInfer calls by gRPC status code, once each (an interleaved Rank call is one)",
    ("method", "code"),
)
# Per model, as Triton counts them: an interleaved request counts for each model it used. Requests/s, error
# ratios and autoscaling read REQUESTS; traffic per variant reads VARIANT_SUCCESS.
REQUEST_SUCCESS = Counter(
    "mtrank_inference_request_success", "Rank and ModelInfer requests answered successfully", VARIANT_LABELS
)
REQUEST_FAILURE = Counter(
    "mtrank_inference_request_failure", "Rank and ModelInfer requests that failed, by reason", (*VARIANT_LABELS, "reason")
)
VARIANT_SUCCESS = Counter(
    "mtrank_variant_request_success",
    "Rank and ModelInfer requests answered successfully, once each, by variant: an interleaved request "
    "counts once for '<experiment>:interleaved' (its exposure's variant) whatever models its arms use",
    ("variant",),
)
INFERENCE_COUNT = Counter(
    "mtrank_inference_count", "Candidate rows scored (Triton: inferences)", MODEL_LABELS
)
EXEC_COUNT = Counter("mtrank_inference_exec_count", "ONNX Runtime batch executions", MODEL_LABELS)
LONE_RUNS = Counter(
    "mtrank_inference_lone_runs",
    "ONNX Runtime runs alone in the process (--spinning alone): split, scored in parts at once "
    "(--split-rows), or spinning/sleeping, the session the lone-run chooser picked",
    ("session",),
)
LOOP_RUNS = Counter(
    "mtrank_inference_loop_runs",
    "ONNX Runtime runs on the event loop's own thread (--lone-runs loop: alone, calls coming one at a time)",
)
REQUEST_DURATION = Histogram(
    "mtrank_inference_request_duration_seconds",
    "Rank and ModelInfer request time in the server",
    VARIANT_LABELS,
    buckets=_LATENCY,
)
QUEUE_DURATION = Histogram(
    "mtrank_inference_queue_duration_seconds",
    "Time a request waited for a batch",
    VARIANT_LABELS,
    buckets=_LATENCY,
)
COMPUTE_DURATION = Histogram(
    "mtrank_inference_compute_infer_duration_seconds",
    "ONNX Runtime time of the batches a request was in",
    VARIANT_LABELS,
    buckets=_LATENCY,
)
BATCH_SIZE = Histogram(
    "mtrank_inference_batch_size",
    "Rows per ONNX Runtime execution",
    MODEL_LABELS,
    buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
)
QUEUE_ROWS = Gauge(
    "mtrank_inference_pending_rows", "Rows waiting in a model version's batch queue", MODEL_LABELS
)
MODEL_STATE = Enum(
    "mtrank_model_load_state",
    "Load state of a model version",
    MODEL_LABELS,
    states=["loading", "ready", "draining", "unloaded", "failed"],
)
MODEL_LOADS = Counter(
    "mtrank_model_load", "Model version load attempts, by outcome", (*MODEL_LABELS, "outcome")
)
PROVIDER = Gauge(
    "mtrank_execution_provider",
    "1 for the execution provider a model version obtained (provider) and the one the ranker asked for "
    "(requested: the first of its providers that its ONNX Runtime build offers); they differ after a "
    "fallback",
    (*MODEL_LABELS, "provider", "requested"),
)
ITEM_OOV = Counter("mtrank_item_oov", "Candidate ids missing from the item feature table", MODEL_LABELS)
EXPOSURES_SENT = Counter("mtrank_exposures_sent", "Exposure events the event producer accepted")
EXPOSURES_DROPPED = Counter(
    "mtrank_exposures_dropped",
    "Exposure events dropped (buffer full, refused by the event producer, sink error)",
)
EXPOSURE_BUFFER = Gauge("mtrank_exposure_buffer_events", "Exposure events waiting for the event producer")
RETRIEVAL_UP = Gauge(
    "mtrank_retrieval_up",
    "1 while the retrieval service at target answers the ranker's probes, else 0; no series without "
    "--retrieval",
    ("target",),
)
SNAPSHOT_SWAPS = Counter("mtrank_snapshot_swaps", "Router + model set swaps, by outcome", ("outcome",))


# (model, version) -> the (provider, requested) labels exported for it
_PROVIDERS: dict[tuple[str, str], tuple[str, str]] = {}


def set_provider(model: str, version: str, provider: str, requested: str) -> None:
    """Export the providers of a version just loaded in place of its previous load's: a reload that got
    another provider must not leave the old one at 1 (a fallback alert would go on firing)."""
    clear_provider(model, version)
    PROVIDER.labels(model, version, provider, requested).set(1)
    _PROVIDERS[model, version] = (provider, requested)


def clear_provider(model: str, version: str) -> None:
    """Stop exporting the providers of a version that no longer serves."""
    labels = _PROVIDERS.pop((model, version), None)
    if labels is not None:
        PROVIDER.remove(model, version, *labels)


@dataclass(frozen=True)
class VariantSeries:
    """The per-request series of one (model, version, variant), resolved once: ``labels()`` costs ~20 us."""

    success: Counter
    duration: Histogram
    queue: Histogram
    compute: Histogram
    variant_success: Counter  # the variant's, shared by every model of the variant


@functools.lru_cache(maxsize=4096)
def variant_series(model: str, version: str, variant: str) -> VariantSeries:
    labels = (model, version, variant)
    return VariantSeries(
        REQUEST_SUCCESS.labels(*labels),
        REQUEST_DURATION.labels(*labels),
        QUEUE_DURATION.labels(*labels),
        COMPUTE_DURATION.labels(*labels),
        VARIANT_SUCCESS.labels(variant),
    )


def served(series: Sequence[VariantSeries], elapsed: float) -> None:
    """Count a request answered successfully in ``elapsed`` seconds: for each model it used (``series``, one
    per model; an interleaved request's two arms may use two) and once for its variant."""
    for model_series in series:
        model_series.success.inc()
        model_series.duration.observe(elapsed)
    series[0].variant_success.inc()


@contextlib.contextmanager
def accounted(series: VariantSeries, labels: tuple[str, str, str], started: float) -> Iterator[None]:
    """Count the request the block serves: success and duration (from ``started``, a perf_counter time), or
    a failure labelled with the error's class (``RankerError``), ``cancelled`` or ``internal``."""
    try:
        yield
    except RankerError as exc:
        REQUEST_FAILURE.labels(*labels, type(exc).__name__).inc()
        raise
    except asyncio.CancelledError:  # the client went away or its deadline passed
        REQUEST_FAILURE.labels(*labels, "cancelled").inc()
        raise
    except Exception:
        REQUEST_FAILURE.labels(*labels, "internal").inc()
        raise
    served((series,), time.perf_counter() - started)
