"""The Rank request flow, free of transport: validate, assign, retrieve, featurise, score, rank, log.

Imports nothing from grpc (KServe's data plane does the same); the servicer converts protobuf at the edge.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from proto import limits
from ranker_server import metrics
from ranker_server.errors import DeadlineExceeded, InvalidInput, ModelNotFound, RankerError
from ranker_server.exposure import ExposureLogger, ExposureRecord, now_ms
from ranker_server.features import build_rows
from ranker_server.model_repository import LoadedModel, ModelRepository
from ranker_server.routing import RANKING, RETRIEVAL, Assignment, Payload, Router

logger = logging.getLogger(__name__)

DEFAULT_VARIANT = "default"


@dataclass(frozen=True)
class RankQuery:
    """A validated-on-use Rank request in plain types (arrays, not repeated fields)."""

    user_id: str
    candidate_ids: np.ndarray  # int64[N]; empty -> retrieval
    request_id: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    user_sparse: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    user_dense: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    candidate_sparse: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    candidate_dense: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    top_k: int = 0
    retrieve_k: int = 0
    model: tuple[str, str] | None = None  # pinned (name, version): no ranking experiment for this request


PINNED_VARIANT = "pinned"


@dataclass(frozen=True)
class AssignmentInfo:
    experiment_key: str
    variant_key: str
    variation_id: int
    stage: str
    layer: str


@dataclass(frozen=True)
class RankResult:
    request_id: str
    candidate_ids: np.ndarray  # int64[K], ranked
    task_names: tuple[str, ...]
    task_scores: np.ndarray  # float32[T, K]
    merged_scores: np.ndarray  # float32[K]
    assignments: tuple[AssignmentInfo, ...]
    model: tuple[str, str]
    retrieval_model: tuple[str, str] | None


@dataclass(frozen=True)
class Retrieved:
    candidate_ids: np.ndarray
    model: tuple[str, str]


class CandidateSource(Protocol):
    """The retrieval service as the data plane sees it (``retrieval_client.RetrievalClient``)."""

    max_k: int | None  # the largest k it accepts, when known

    async def probe(self, timeout_s: float) -> bool: ...

    async def retrieve(
        self,
        request_id: str,
        user_id: str,
        k: int,
        model: tuple[str, str] | None,
        attributes: Mapping[str, str],
        timeout_s: float | None,
    ) -> Retrieved: ...


def check_query(query: RankQuery, max_candidates: int) -> None:
    """Request-level checks that do not depend on the model.

    Raises:
        InvalidInput: naming the field.
    """
    if not query.user_id:
        raise InvalidInput("user_id", "must be non-empty")
    problem = limits.request_problem(
        ids={"user_id": query.user_id, "request_id": query.request_id},
        names={"model.name": query.model[0], "model.version": query.model[1]} if query.model else None,
        attributes=query.attributes,
    )
    if problem is not None:
        raise InvalidInput(*problem)
    n = len(query.candidate_ids)
    if n > max_candidates:
        raise InvalidInput(
            "candidate_ids", f"has {n} candidates, the server accepts at most {max_candidates}"
        )
    if n > 1:
        ordered = np.sort(query.candidate_ids)
        repeated = ordered[1:] == ordered[:-1]
        if repeated.any():
            raise InvalidInput("candidate_ids", f"duplicate id {int(ordered[1:][repeated][0])}")
    for name in ("user_dense", "candidate_dense"):
        values = getattr(query, name)
        if values.size and not np.isfinite(values).all():
            raise InvalidInput(name, "contains NaN or infinity")
    if not n and (query.candidate_sparse.size or query.candidate_dense.size):
        raise InvalidInput("candidate_sparse", "candidate features given without candidate_ids")
    if query.model is not None and not all(query.model):
        raise InvalidInput("model", "set both name and version to pin a model, or neither")
    if query.retrieve_k > max_candidates:
        raise InvalidInput("retrieve_k", f"must be at most {max_candidates} (0: the server's default)")


def merge_scores(
    model: LoadedModel, logits: np.ndarray, weights: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-task scores ([T, N]: sigmoid for binary tasks, raw for regression) and their weighted sum ([N]).

    No weights means every task counts 1; a task the weights do not name counts 0.
    """
    # sigmoid(x) = exp(-softplus(-x)), softplus by logaddexp: no overflow either way, four in-place calls.
    scores = np.negative(logits, dtype=np.float32)
    np.logaddexp(0.0, scores, out=scores)
    np.negative(scores, out=scores)
    np.exp(scores, out=scores)
    np.copyto(scores, logits, where=~model.binary_tasks)  # regression tasks stay raw
    w = (
        np.array([weights.get(name, 0.0) for name in model.task_names], np.float32)
        if weights
        else np.ones(len(model.task_names), np.float32)
    )
    return scores.T, scores @ w


def _pick(assignments: Sequence[Assignment], stage: str) -> Assignment | None:
    return next((a for a in assignments if a.stage == stage and a.in_experiment), None)


@dataclass(frozen=True)
class _Weights:
    """The part of a variant payload a pinned request needs: its task weights."""

    task_weights: Mapping[str, float] = field(default_factory=dict)
    model_name: str = ""
    model_version: str = ""


_EQUAL_WEIGHTS = _Weights()  # no weights: every task counts 1 (``merge_scores``)


class RankDataPlane:
    """Serves Rank for every variant the router in force can assign."""

    def __init__(
        self,
        repository: ModelRepository,
        exposures: ExposureLogger | None,
        retrieval: CandidateSource | None,
        max_candidates: int,
        retrieve_k: int,
        retrieval_timeout_s: float,
    ) -> None:
        self._repository = repository
        self._exposures = exposures
        self._retrieval = retrieval
        self._max_candidates = max_candidates
        self._retrieve_k = retrieve_k
        self._retrieval_timeout_s = retrieval_timeout_s

    async def rank(self, query: RankQuery, deadline: float | None = None) -> RankResult:
        """Rank the query's candidates (or retrieved ones) with its assigned variant.

        Args:
            query: the request.
            deadline: absolute event-loop time by which the answer is due; None for no deadline.

        Raises:
            RankerError: a subclass saying what went wrong (mapped to a status by the interceptor).
        """
        started = time.perf_counter()
        try:
            check_query(query, self._max_candidates)
        except InvalidInput:  # before assignment: no model or variant to label it with yet
            metrics.REQUEST_FAILURE.labels("", "", "", "InvalidInput").inc()
            raise
        request_id = query.request_id or uuid.uuid4().hex
        snapshot = self._repository.snapshot  # one router and one model set for the whole request
        assignments = list(snapshot.router.assign(query.user_id, dict(query.attributes)))
        default = snapshot.router.default_for(RANKING)
        if query.model is not None:
            # Pinned: the ranking experiment does not apply to this request (nothing assigned, nothing logged).
            assignments = [a for a in assignments if a.stage != RANKING]
            key, variant = query.model, PINNED_VARIANT
            payload: Payload = default if key == (default.model_name, default.model_version) else _EQUAL_WEIGHTS
        else:
            ranking = _pick(assignments, RANKING)
            payload = ranking.payload if ranking else default
            variant = f"{ranking.experiment_key}:{ranking.variant_key}" if ranking else DEFAULT_VARIANT
            key = (payload.model_name, payload.model_version)
        labels = (*key, variant)
        model = snapshot.models.get(key)
        if model is None and query.model is not None:  # the client named it: its request is wrong
            metrics.REQUEST_FAILURE.labels("", "", "", "InvalidInput").inc()
            served = ", ".join(sorted(f"{n}/{v}" for n, v in snapshot.models))
            raise InvalidInput("model", f"{key[0]}/{key[1]} is not served here (served: {served})")
        if model is None:
            metrics.REQUEST_FAILURE.labels(*labels, "ModelNotFound").inc()
            raise ModelNotFound(
                f"model: variant {variant} names {key[0]}/{key[1]}, which this server does not serve"
            )
        series = metrics.variant_series(*labels)  # only for served models: no empty series for typos
        try:
            with model.use():
                async with asyncio.timeout_at(deadline):
                    result = await self._rank_with(
                        query,
                        request_id,
                        model,
                        variant,
                        payload,
                        assignments,
                        snapshot.router,
                        deadline,
                        series,
                    )
        except TimeoutError:
            metrics.REQUEST_FAILURE.labels(*labels, "DeadlineExceeded").inc()
            raise DeadlineExceeded("deadline passed before the request was ranked") from None
        except RankerError as exc:
            metrics.REQUEST_FAILURE.labels(*labels, type(exc).__name__).inc()
            raise
        except asyncio.CancelledError:  # the client went away or its deadline passed
            metrics.REQUEST_FAILURE.labels(*labels, "cancelled").inc()
            raise
        except Exception:
            metrics.REQUEST_FAILURE.labels(*labels, "internal").inc()
            raise
        series.success.inc()
        series.duration.observe(time.perf_counter() - started)
        return result

    async def _rank_with(
        self,
        query: RankQuery,
        request_id: str,
        model: LoadedModel,
        variant: str,
        payload: Payload,
        assignments: list[Assignment],
        router: Router,
        deadline: float | None,
        series: metrics.VariantSeries,
    ) -> RankResult:
        candidate_ids, retrieval_model = query.candidate_ids, None
        if not len(candidate_ids):
            retrieved = await self._retrieve(query, request_id, assignments, router, deadline)
            candidate_ids, retrieval_model = retrieved.candidate_ids, retrieved.model
        rows = build_rows(
            model.package.layout,
            model.table,
            candidate_ids,
            query.user_sparse,
            query.user_dense,
            query.candidate_sparse,
            query.candidate_dense,
        )
        if rows.oov:
            metrics.ITEM_OOV.labels(*model.key).inc(rows.oov)
        logits, timing = await model.batcher(variant).infer(rows.sparse, rows.dense, deadline)
        series.queue.observe(timing.queue_s)
        series.compute.observe(timing.compute_s)
        task_scores, merged = merge_scores(model, logits, payload.task_weights)
        order = np.argsort(-merged, kind="stable")
        if query.top_k:
            order = order[: query.top_k]
        ranked = candidate_ids[order]
        logged = [a for a in assignments if a.should_log]
        if self._exposures is not None and logged:
            self._log(request_id, query.user_id, logged, model.key, retrieval_model, ranked)
        return RankResult(
            request_id=request_id,
            candidate_ids=ranked,
            task_names=model.task_names,
            task_scores=task_scores[:, order],
            merged_scores=merged[order],
            assignments=tuple(
                AssignmentInfo(a.experiment_key, a.variant_key or "", a.variation_id, a.stage, a.layer or "")
                for a in assignments
                if a.in_experiment
            ),
            model=model.key,
            retrieval_model=retrieval_model,
        )

    async def _retrieve(
        self,
        query: RankQuery,
        request_id: str,
        assignments: list[Assignment],
        router: Router,
        deadline: float | None,
    ) -> Retrieved:
        if self._retrieval is None:
            raise InvalidInput(
                "candidate_ids", "is empty and this server has no retrieval service configured"
            )
        chosen = _pick(assignments, RETRIEVAL)
        # The retrieval variant comes from the retrieval layer; outside it, the router's default applies.
        payload = chosen.payload if chosen else router.default_for(RETRIEVAL)
        model = (payload.model_name, payload.model_version)
        timeout = self._retrieval_timeout_s
        if deadline is not None:
            timeout = min(timeout, max(deadline - asyncio.get_running_loop().time(), 0.0))
        # Clamped to what retrieval accepts: asking more would only fail.
        k = min(query.retrieve_k or self._retrieve_k, self._max_candidates, self._retrieval.max_k or self._max_candidates)
        return await self._retrieval.retrieve(request_id, query.user_id, k, model, query.attributes, timeout)

    def _log(
        self,
        request_id: str,
        user_id: str,
        assignments: list[Assignment],
        ranking_model: tuple[str, str],
        retrieval_model: tuple[str, str] | None,
        ranked: np.ndarray,
    ) -> None:
        """One exposure per logged assignment; a retrieval variant counts only when retrieval ran."""
        assert self._exposures is not None
        items, at = ranked.tolist(), now_ms()
        records = []
        for a in assignments:
            model = ranking_model if a.stage == RANKING else retrieval_model
            if model is None:
                continue
            records.append(
                ExposureRecord(
                    request_id,
                    user_id,
                    a.experiment_key,
                    a.variant_key or "",
                    a.variation_id,
                    a.stage,
                    *model,
                    items,
                    at,
                )
            )
        self._exposures.log(records)
