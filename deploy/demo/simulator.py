"""A product backend and its users, simulated: ask ``Rank`` for a feed, show the top items, click by ground truth.

Users click an item they were shown with probability ``examination(position) * P(click | user, item)``, where
``P(click | user, item)`` is the ground truth (the synthetic world's function, or held-out real ratings). So
a ranking variant that puts better items first earns more clicks, exactly as it would with real users.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import numpy as np
from tqdm import tqdm

from analytics.events.client import OutcomeClient
from proto import ranking_pb2, ranking_pb2_grpc

logger = logging.getLogger(__name__)


class GroundTruth(Protocol):
    """What the simulator needs to know about the world."""

    @property
    def n_items(self) -> int: ...

    def user_features(self, user: int) -> tuple[list[int], list[float]]:
        """User-side sparse ids and dense values, in the ranking model's column order."""
        ...

    def click_probability(self, user: int, items: np.ndarray) -> np.ndarray:
        """P(click | user, item) for each item, before position bias."""
        ...


@dataclass(frozen=True)
class SimulationConfig:
    users: int = 1500
    requests_per_user: int = 3
    candidates_per_request: int = 100  # 0: let the ranker retrieve candidates
    top_k: int = 10
    concurrency: int = 8
    deadline_s: float = 5.0
    seed: int = 0


@dataclass
class SimulationSummary:
    requests: int = 0
    failed_requests: int = 0
    impressions: int = 0
    clicks: int = 0
    top_clicks: int = 0
    clicks_by_variant: dict[str, int] = field(default_factory=dict)
    requests_by_variant: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


def examination_probability(positions: np.ndarray, attention: float = 0.5) -> np.ndarray:
    """Chance a user looks at the item in each (0-based) position: ``attention`` times the DCG discount."""
    return attention / np.log2(positions + 2.0)


class UserSimulator:
    """Drives ``Rank`` for many users concurrently and reports what they clicked through ``OutcomeClient``."""

    def __init__(
        self,
        world: GroundTruth,
        rank: ranking_pb2_grpc.RankerStub,
        outcomes: OutcomeClient,
        config: SimulationConfig,
        user_id: Callable[[int], str] = lambda u: f"user-{u}",
    ) -> None:
        self.world = world
        self.rank = rank
        self.outcomes = outcomes
        self.config = config
        self.user_id = user_id
        self.summary = SimulationSummary()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def run(self, users: np.ndarray) -> SimulationSummary:
        """Simulate ``requests_per_user`` feeds for each user; returns totals (failed requests included).

        On an exception (Ctrl-C included) queued users are cancelled and running ones stop at their next feed.
        """
        pool = ThreadPoolExecutor(self.config.concurrency)
        try:
            futures = [pool.submit(self._simulate_user, int(u)) for u in users]
            for future in tqdm(as_completed(futures), total=len(futures), desc="simulating users", unit="user"):
                future.result()
        except BaseException:
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return self.summary

    def _simulate_user(self, user: int) -> None:
        rng = np.random.default_rng((self.config.seed, user))
        sparse, dense = self.world.user_features(user)
        for _ in range(self.config.requests_per_user):
            if self._stop.is_set():
                return
            request = ranking_pb2.RankRequest(
                user_id=self.user_id(user), user_sparse=sparse, user_dense=dense, top_k=self.config.top_k
            )
            if self.config.candidates_per_request:
                candidates = rng.choice(self.world.n_items, self.config.candidates_per_request, replace=False) + 1
                request.candidate_ids.extend(candidates.tolist())
            try:
                response = self.rank.Rank(request, timeout=self.config.deadline_s)
            except grpc.RpcError as error:
                self._count_error(error.code().name)
                continue
            self._react(user, response, rng)

    def _react(self, user: int, response: ranking_pb2.RankResponse, rng: np.random.Generator) -> None:
        """Show the feed, sample clicks, report impressions, clicks and top-slot clicks as outcomes."""
        shown = np.asarray(response.candidate_ids, dtype=np.int64)
        p_click = examination_probability(np.arange(len(shown))) * self.world.click_probability(user, shown)
        is_click = rng.random(len(shown)) < p_click
        clicked = shown[is_click]
        user_id = self.user_id(user)
        events = [
            {"user_id": user_id, "metric": "impression", "request_id": response.request_id, "item_id": int(i)}
            for i in shown
        ]
        events += [
            {"user_id": user_id, "metric": "click", "request_id": response.request_id, "item_id": int(i)}
            for i in clicked
        ]
        if len(shown) and is_click[0]:
            # A click on the first item: the binomial "the feed's best slot worked" metric.
            events.append({"user_id": user_id, "metric": "top_click", "request_id": response.request_id})
        self.outcomes.report_many(events)
        variant = ",".join(f"{a.experiment_key}={a.variant_key}" for a in response.assignments) or "(none)"
        with self._lock:
            s = self.summary
            s.requests += 1
            s.impressions += len(shown)
            s.clicks += len(clicked)
            s.top_clicks += int(len(shown) > 0 and is_click[0])
            s.requests_by_variant[variant] = s.requests_by_variant.get(variant, 0) + 1
            s.clicks_by_variant[variant] = s.clicks_by_variant.get(variant, 0) + len(clicked)

    def _count_error(self, code: str) -> None:
        with self._lock:
            self.summary.requests += 1
            self.summary.failed_requests += 1
            self.summary.errors[code] = self.summary.errors.get(code, 0) + 1
