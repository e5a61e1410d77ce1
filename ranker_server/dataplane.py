"""The Rank request flow, free of transport: validate, assign, retrieve, featurise, score, rank, log.

Imports nothing from grpc (KServe's data plane does the same); the servicer converts protobuf at the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from experiment_router.router import serving_assignments
from proto import limits
from ranker_server import metrics
from ranker_server.errors import DeadlineExceeded, InvalidInput, ModelNotFound, RankerError
from ranker_server.exposure import ExposureLogger, ExposureRecord, now_ms
from ranker_server.features import build_rows, user_item_rows
from ranker_server.inference import GraphRows, ModelInput
from ranker_server.interleaving import interleave
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
class ArmInfo:
    """One arm of an interleaved request: its variation key and model."""

    key: str
    model: tuple[str, str]


_NO_TEAMS = np.zeros(0, np.uint8)
_NO_TEAMS.flags.writeable = False


@dataclass(frozen=True)
class RankResult:
    """The ranked list; when interleaved, ``teams[i]`` is the index in ``arms`` of position i's arm.

    An interleaved result's scores at each position are its arm's (NaN for a task that arm's model lacks),
    and ``model`` is the first arm's.
    """

    request_id: str
    candidate_ids: np.ndarray  # int64[K], ranked
    task_names: tuple[str, ...]
    task_scores: np.ndarray  # float32[T, K]
    merged_scores: np.ndarray  # float32[K]
    assignments: tuple[AssignmentInfo, ...]
    model: tuple[str, str]
    retrieval_model: tuple[str, str] | None
    teams: np.ndarray = field(default_factory=lambda: _NO_TEAMS)  # uint8[K]; empty unless interleaved
    arms: tuple[ArmInfo, ...] = ()


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
        if np.count_nonzero(repeated):  # one C call; ``.any()`` goes through numpy's Python wrappers (+24 us)
            raise InvalidInput("candidate_ids", f"duplicate id {int(ordered[1:][repeated][0])}")
    for name in ("user_dense", "candidate_dense"):
        values = getattr(query, name)
        if values.size and np.count_nonzero(np.isfinite(values)) < values.size:
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
    """Per-task scores ([T, N], C-contiguous: sigmoid for binary tasks, raw for regression) and their weighted
    sum ([N]).

    No weights means every task counts 1; a task the weights do not name counts 0. Task rows are contiguous so
    that the top-k gather reads each row once (``take`` over a transposed view was 1.7x slower after an ORT
    run); the sigmoid is 1 / (1 + exp(-x)), four cheap in-place calls, exact to float32 rounding everywhere:
    exp(-x) overflows to inf below x = -88 and gives the right 0 (11 us less than ``logaddexp`` after an ORT run).
    """
    scores = np.negative(logits.T, dtype=np.float32, order="C")
    with np.errstate(over="ignore"):
        np.exp(scores, out=scores)
    scores += 1.0
    np.reciprocal(scores, out=scores)
    for task, binary in enumerate(model.binary_tasks):
        if not binary:  # regression tasks stay raw
            scores[task] = logits[:, task]
    w = (
        np.array([weights.get(name, 0.0) for name in model.task_names], np.float32)
        if weights
        else np.ones(len(model.task_names), np.float32)
    )
    return scores, w @ scores


def _pick(assignments: Sequence[Assignment], stage: str) -> Assignment | None:
    return next((a for a in assignments if a.stage == stage), None)


@dataclass(frozen=True)
class _Weights:
    """The part of a variant payload a pinned request needs: its task weights."""

    task_weights: Mapping[str, float] = field(default_factory=dict)
    model_name: str = ""
    model_version: str = ""


_EQUAL_WEIGHTS = _Weights()  # no weights: every task counts 1 (``merge_scores``)


@dataclass(frozen=True)
class _Arm:
    """A ranking the request is scored with: one, or two when the user is in an interleaving experiment."""

    key: str
    model: LoadedModel
    payload: Payload | _Weights


def _count_failure(labels: Sequence[tuple[str, str, str]], reason: str) -> None:
    for model_labels in labels:
        metrics.REQUEST_FAILURE.labels(*model_labels, reason).inc()


def _team_scores(
    arms: Sequence[_Arm],
    scored: Sequence[tuple[np.ndarray, np.ndarray]],
    order: np.ndarray,
    teams: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per position, the scores of the arm that supplied it, in the first arm's task order ([T, K], [K])."""
    names = arms[0].model.task_names
    task_scores = np.full((len(names), len(order)), np.nan, np.float32)
    merged = np.empty(len(order), np.float32)
    for team, (arm, (scores, totals)) in enumerate(zip(arms, scored, strict=True)):
        at = teams == team
        rows = order[at]
        merged[at] = totals[rows]
        for i, name in enumerate(names):
            if name in arm.model.task_names:
                task_scores[i, at] = scores[arm.model.task_names.index(name), rows]
    return task_scores, merged


async def _all_or_cancel(calls: Sequence[Awaitable[np.ndarray]]) -> list[np.ndarray]:
    """Every call's result, or the first failure once the others are cancelled and finished: ``gather`` alone
    leaves an interleaved request's other arm queued or running after the request has failed and released its
    models."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


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
        request_id = query.request_id or os.urandom(16).hex()  # as unique as uuid4().hex, 30 us less when cold
        snapshot = self._repository.snapshot  # one router and one model set for the whole request
        assignments = serving_assignments(snapshot.router.assign(query.user_id, query.attributes))
        default = snapshot.router.default_for(RANKING)
        wanted: list[tuple[str, Payload | _Weights]]  # (arm key, payload): one, or two when interleaved
        if query.model is not None:
            # Pinned: the ranking experiment does not apply to this request (nothing assigned, nothing logged).
            assignments = [a for a in assignments if a.stage != RANKING]
            variant, keys = PINNED_VARIANT, [query.model]
            pinned = default if query.model == (default.model_name, default.model_version) else _EQUAL_WEIGHTS
            wanted = [(variant, pinned)]
        else:
            ranking = _pick(assignments, RANKING)
            variant = f"{ranking.experiment_key}:{ranking.variant_key}" if ranking else DEFAULT_VARIANT
            interleaving = ranking.interleaving if ranking else None
            if interleaving is not None:
                wanted = [(arm.key, arm.payload) for arm in interleaving.arms]
            else:
                wanted = [(variant, ranking.payload if ranking else default)]
            keys = [(p.model_name, p.model_version) for _, p in wanted]
        arms = []
        for (arm_key, payload), key in zip(wanted, keys, strict=True):
            model = snapshot.models.get(key)
            if model is None and query.model is not None:  # the client named it: its request is wrong
                metrics.REQUEST_FAILURE.labels("", "", "", "InvalidInput").inc()
                served = ", ".join(sorted(f"{n}/{v}" for n, v in snapshot.models))
                raise InvalidInput("model", f"{key[0]}/{key[1]} is not served here (served: {served})")
            if model is None:
                metrics.REQUEST_FAILURE.labels(*key, variant, "ModelNotFound").inc()
                raise ModelNotFound(
                    f"model: variant {variant} names {key[0]}/{key[1]}, which this server does not serve"
                )
            arms.append(_Arm(arm_key, model, payload))
        models = list({arm.model.key: arm.model for arm in arms}.values())  # arms sharing a model score once
        labels = [(*m.key, variant) for m in models]
        series = [metrics.variant_series(*label) for label in labels]  # served models only: no empty series for typos
        try:
            with contextlib.ExitStack() as held:
                for m in models:
                    held.enter_context(m.use())
                async with asyncio.timeout_at(deadline):
                    result = await self._rank_with(
                        query,
                        request_id,
                        arms,
                        models,
                        variant,
                        assignments,
                        snapshot.router,
                        deadline,
                        series,
                    )
        except TimeoutError:
            _count_failure(labels, "DeadlineExceeded")
            raise DeadlineExceeded("deadline passed before the request was ranked") from None
        except RankerError as exc:
            _count_failure(labels, type(exc).__name__)
            raise
        except asyncio.CancelledError:  # the client went away or its deadline passed
            _count_failure(labels, "cancelled")
            raise
        except Exception:
            _count_failure(labels, "internal")
            raise
        metrics.served(series, time.perf_counter() - started)  # for each model it used, once for its variant
        return result

    async def _rank_with(
        self,
        query: RankQuery,
        request_id: str,
        arms: Sequence[_Arm],
        models: Sequence[LoadedModel],
        variant: str,
        assignments: Sequence[Assignment],
        router: Router,
        deadline: float | None,
        series: Sequence[metrics.VariantSeries],
    ) -> RankResult:
        candidate_ids, retrieval_model = query.candidate_ids, None
        if not len(candidate_ids):
            retrieved = await self._retrieve(query, request_id, assignments, router, deadline)
            candidate_ids, retrieval_model = retrieved.candidate_ids, retrieved.model
        if len(models) == 1:  # the common path: no task hand-off
            logits = [await self._infer(query, models[0], candidate_ids, variant, deadline, series[0])]
        else:  # interleaved with two models: both score at once, each through its own batcher
            pairs = zip(models, series, strict=True)
            logits = await _all_or_cancel(
                [self._infer(query, m, candidate_ids, variant, deadline, s) for m, s in pairs]
            )
        by_model = dict(zip((m.key for m in models), logits, strict=True))
        scored = [merge_scores(arm.model, by_model[arm.model.key], arm.payload.task_weights) for arm in arms]
        orders = [np.argsort(-merged, kind="stable") for _, merged in scored]
        teams = _NO_TEAMS
        arm_info: tuple[ArmInfo, ...] = ()
        if len(arms) == 1:
            order = orders[0][: query.top_k] if query.top_k else orders[0]
            task_scores, merged = scored[0][0].take(order, axis=1), scored[0][1].take(order)
        else:
            # Never past the candidates: top_k may be 2**32 - 1, and drawing the coins takes O(k^2).
            k = min(query.top_k or len(candidate_ids), len(candidate_ids))
            ranking_a, ranking_b = orders[0].tolist(), orders[1].tolist()
            picked, team_list = interleave(ranking_a, ranking_b, k, query.user_id, request_id)
            order, teams = np.array(picked, np.intp), np.array(team_list, np.uint8)
            task_scores, merged = _team_scores(arms, scored, order, teams)
            arm_info = tuple(ArmInfo(arm.key, arm.model.key) for arm in arms)
        ranked = candidate_ids.take(order)
        logged = [a for a in assignments if a.should_log]
        if self._exposures is not None and logged:
            model = arms[0].model.key
            self._log(request_id, query.user_id, logged, model, retrieval_model, ranked, teams, arm_info)
        return RankResult(
            request_id=request_id,
            candidate_ids=ranked,
            task_names=arms[0].model.task_names,
            task_scores=task_scores,
            merged_scores=merged,
            assignments=tuple(
                AssignmentInfo(a.experiment_key, a.variant_key or "", a.variation_id, a.stage, a.layer or "")
                for a in assignments
            ),
            model=arms[0].model.key,
            retrieval_model=retrieval_model,
            teams=teams,
            arms=arm_info,
        )

    async def _infer(
        self,
        query: RankQuery,
        model: LoadedModel,
        candidate_ids: np.ndarray,
        variant: str,
        deadline: float | None,
        series: metrics.VariantSeries,
    ) -> np.ndarray:
        """Logits of every candidate from ``model``, through the batcher of ``variant`` on it.

        Candidates whose features all come from the item table go to the model's factored graph when it has one
        (one user row and each candidate's row of the precomputed item parts); those that bring features go to
        the package graph as full rows.
        """
        layout = model.package.layout
        inputs: ModelInput
        if model.factored is not None and not (query.candidate_sparse.size or query.candidate_dense.size):
            inputs, oov = user_item_rows(layout, model.table, candidate_ids, query.user_sparse, query.user_dense)
        else:
            rows = build_rows(
                layout,
                model.table,
                candidate_ids,
                query.user_sparse,
                query.user_dense,
                query.candidate_sparse,
                query.candidate_dense,
            )
            inputs, oov = GraphRows(rows.sparse, rows.dense), rows.oov
        if oov:
            metrics.ITEM_OOV.labels(*model.key).inc(oov)
        logits, timing = await model.batcher(variant).infer(inputs, deadline)
        series.queue.observe(timing.queue_s)
        series.compute.observe(timing.compute_s)
        return logits

    async def _retrieve(
        self,
        query: RankQuery,
        request_id: str,
        assignments: Sequence[Assignment],
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
        assignments: Sequence[Assignment],
        ranking_model: tuple[str, str],
        retrieval_model: tuple[str, str] | None,
        ranked: np.ndarray,
        teams: np.ndarray,
        arms: tuple[ArmInfo, ...],
    ) -> None:
        """One exposure per logged assignment (only those that served the request, ``serving_assignments``); a retrieval
        variant counts only when retrieval ran. An interleaving assignment's exposure carries the team of every
        position.
        """
        assert self._exposures is not None
        items, at = ranked.tolist(), now_ms()
        records = []
        for a in assignments:
            model = ranking_model if a.stage == RANKING else retrieval_model
            interleaved = a.stage == RANKING and a.interleaving is not None
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
                    teams.tolist() if interleaved else (),
                    tuple((arm.key, *arm.model) for arm in arms) if interleaved else (),
                )
            )
        self._exposures.log(records)
