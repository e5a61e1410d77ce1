"""Retrieval logic, free of gRPC: validate, resolve the model version, get the user vector, search, exclude.

The version is the one the request names; a request naming none gets the experiment router's retrieval-layer
choice when the server runs with an experiment config (the assignments made are returned), else the default.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from proto import limits
from retrieval_server.errors import InvalidInput
from retrieval_server.metrics import RetrievalMetrics
from retrieval_server.model_repository import LoadedModel, ModelRepository


@dataclass(frozen=True)
class RetrieveQuery:
    """A Retrieve request as plain data."""

    user_id: str
    k: int
    request_id: str = ""
    exclude_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    user_features: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    neighbor_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    model_name: str = ""
    model_version: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteAssignment:
    """An experiment assignment the server made for a request (GrowthBook terms)."""

    experiment_key: str
    variant_key: str
    variation_id: int
    stage: str
    layer: str


@dataclass(frozen=True)
class RetrieveResult:
    request_id: str
    candidate_ids: np.ndarray
    scores: np.ndarray
    model: tuple[str, str]
    embedded_on_the_fly: bool
    assignments: tuple[RouteAssignment, ...] = ()


@dataclass(frozen=True)
class ServedModels:
    """What the server serves now (``ListModels``)."""

    models: tuple[tuple[str, str], ...]
    default: tuple[str, str] | None
    max_k: int


class RouterSource(Protocol):
    """``experiment_router.reload.ConfigWatcher`` or anything with a ``current`` Router (assign, default_for)."""

    @property
    def current(self) -> Any: ...


RETRIEVAL_STAGE = "retrieval"
_NO_POSITIONS = np.zeros(0, np.int64)
_NO_POSITIONS.flags.writeable = False


def check_sizes(query: RetrieveQuery) -> None:
    """Bounded string fields (``proto.limits``).

    Raises:
        InvalidInput: naming the field, never quoting its value.
    """
    problem = limits.request_problem(
        ids={"user_id": query.user_id, "request_id": query.request_id},
        names={"model.name": query.model_name, "model.version": query.model_version},
        attributes=query.attributes,
    )
    if problem is not None:
        raise InvalidInput(*problem)


class RetrievalDataPlane:
    """Answers queries against the repository; ONNX runs and index scans go to ``executor``."""

    def __init__(self, repository: ModelRepository, metrics: RetrievalMetrics, max_k: int = 1000,
                 executor: Executor | None = None, router_source: RouterSource | None = None,
                 exclude_neighbours: bool = False) -> None:
        self.repository = repository
        self.metrics = metrics
        self.max_k = max_k
        # Friend suggestion: a user's existing neighbours in the indexed graph are not candidates.
        self.exclude_neighbours = exclude_neighbours
        self._executor = executor
        self._router_source = router_source

    def _route(self, query: RetrieveQuery, source: RouterSource) -> tuple[str, str, tuple[RouteAssignment, ...]]:
        """The retrieval-layer variant of the user's experiment, or the router's retrieval default."""
        router = source.current  # taken once per request
        # the first retrieval experiment the user is in serves (the router's ``serving_assignments``): only it is
        # reported, a later one would be credited with a variant it did not choose
        a = next((a for a in router.assign(query.user_id, dict(query.attributes))
                  if a.stage == RETRIEVAL_STAGE and a.in_experiment), None)
        if a is None:
            default = router.default_for(RETRIEVAL_STAGE)
            return default.model_name, default.model_version, ()
        made = RouteAssignment(a.experiment_key, a.variant_key or "", a.variation_id, a.stage, a.layer or "")
        return a.payload.model_name, a.payload.model_version, (made,)

    def _neighbours_to_embed(self, model: LoadedModel, query: RetrieveQuery) -> np.ndarray:
        """The neighbour positions of a user the index does not hold, whose vector is embedded on the fly."""
        width = model.store.num_features
        if len(query.user_features) == 0:
            raise InvalidInput(
                "user_features",
                f"user {query.user_id!r} is not in the index of {model.name}:{model.version}; "
                f"send its {width} features (and neighbor_ids) to embed it",
            )
        if len(query.user_features) != width:
            raise InvalidInput("user_features", f"expected {width} values, got {len(query.user_features)}")
        if not np.all(np.isfinite(query.user_features)):
            raise InvalidInput("user_features", "values must be finite")
        positions = [model.positions.get(int(n)) for n in query.neighbor_ids]
        unknown = [int(n) for n, p in zip(query.neighbor_ids, positions, strict=True) if p is None]
        if unknown:
            raise InvalidInput("neighbor_ids", f"unknown node ids {unknown[:5]} (neighbours must be indexed nodes)")
        return np.asarray(positions, dtype=np.int64)

    def _search(self, model: LoadedModel, query: RetrieveQuery,
                assignments: tuple[RouteAssignment, ...] = ()) -> RetrieveResult:
        position = model.position(query.user_id)
        if position is not None:  # an indexed user: its stored vector, never itself in the answer
            vector, own = model.embeddings[position], [position]
            neighbours = model.store.neighbours(position) if self.exclude_neighbours else _NO_POSITIONS
        else:
            neighbours = self._neighbours_to_embed(model, query)
            vector, own = model.embed(query.user_features, neighbours, seed=zlib.crc32(query.user_id.encode())), []
            if not np.all(np.isfinite(vector)):  # else no candidate is found: an empty answer, OK
                raise InvalidInput(
                    "user_features", "values too large: the encoder's embedding of them is not finite"
                )
            self.metrics.on_the_fly.labels(model.name, model.version).inc()
        excluded = (model.positions.get(int(i)) for i in query.exclude_ids)
        exclude = [p for p in excluded if p is not None] + own
        if self.exclude_neighbours:
            exclude += neighbours.tolist()
        found, scores = model.index.search(vector, query.k, np.asarray(exclude, dtype=np.int64))
        return RetrieveResult(query.request_id, model.store.ids[found], scores, model.key, position is None,
                              assignments)

    def served(self) -> ServedModels:
        """The loaded versions (sorted), the default one and the largest k."""
        return ServedModels(tuple(sorted(m.key for m in self.repository.loaded())), self.repository.default,
                            self.max_k)

    async def retrieve(self, query: RetrieveQuery) -> RetrieveResult:
        if query.k <= 0 or query.k > self.max_k:
            raise InvalidInput("k", f"must be in 1..{self.max_k}, got {query.k}")
        if not query.user_id:
            raise InvalidInput("user_id", "must not be empty")
        check_sizes(query)
        name, version = query.model_name, query.model_version
        if version and not name:  # else the default (or the router's choice) would answer in its place
            raise InvalidInput("model.name", "must be set when model.version is (both empty: the default)")
        assignments: tuple[RouteAssignment, ...] = ()
        if not name and self._router_source is not None:
            name, version, assignments = self._route(query, self._router_source)
        model = self.repository.get(name, version)  # resolved once per request
        started = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._search, model, query, assignments)
        self.metrics.latency.labels(model.name, model.version).observe(time.perf_counter() - started)
        self.metrics.k.observe(query.k)
        return result
