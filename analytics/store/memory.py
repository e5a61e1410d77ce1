"""In-memory EventStore: the reference semantics, in plain Python; nothing survives the process (tests, notebooks).

Its row path (``user_metric_values`` aggregated per cut in Python) is what the compiled SQL of the warehouse
stores is checked against; its interleaving credit is ``analytics.interleaving``'s reference code.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence

from analytics.analysis_window import ALL_TIME, AnalysisWindow
from analytics.interleaving import (
    Arm,
    ArmsSeen,
    Click,
    InterleavedExposure,
    ShownArms,
    arm_pairs,
    in_window,
    preference_counts_at,
)
from analytics.stats.models.statistics import PreferenceCounts
from analytics.store.base import EventStore, Exposures, Interleaved, ItemOutcomes, Outcomes, TopicPartition


class MemoryEventStore(EventStore):
    """Dict-backed store; thread-safe, applies each call atomically."""

    def __init__(self, attribution_window_ms: int | None = None) -> None:
        super().__init__(attribution_window_ms)
        self._lock = threading.Lock()
        # experiment -> user -> [first_ms, first_event_id, variant, last_ms]
        self._exposures: dict[str, dict[str, list]] = defaultdict(dict)
        # user -> {(metric, event_id): (ts, value)}: of an event's copies, the earliest time and the smallest value
        self._outcomes: dict[str, dict[tuple[str, str], tuple[int, float]]] = defaultdict(dict)
        self._offsets: dict[TopicPartition, int] = {}
        # experiment -> (user, request) -> the first interleaved exposure of that request
        self._requests: dict[str, dict[tuple[str, str], InterleavedExposure]] = defaultdict(dict)
        # experiment -> the arm pair of each interleaved exposure (each copy at another time too)
        self._arms: dict[str, set[ShownArms]] = defaultdict(set)
        # (user, request, item, metric) -> earliest time
        self._item_outcomes: dict[tuple[str, str, int, str], int] = {}

    def apply(
        self,
        exposures: Exposures,
        outcomes: Outcomes,
        offsets: Mapping[TopicPartition, int],
        *,
        interleaved: Interleaved = (),
        item_outcomes: ItemOutcomes = (),
    ) -> None:
        with self._lock:
            self._refuse_offsets_behind(offsets, self._offsets)
            for event_id, experiment, variant, user, ts in exposures:
                state = self._exposures[experiment].get(user)
                if state is None:
                    self._exposures[experiment][user] = [ts, event_id, variant, ts]
                    continue
                if (ts, event_id) < (state[0], state[1]):
                    state[0], state[1], state[2] = ts, event_id, variant
                state[3] = max(state[3], ts)
            for event_id, user, metric, ts, value in outcomes:
                first_ts, least = self._outcomes[user].get((metric, event_id), (ts, value))
                self._outcomes[user][(metric, event_id)] = (min(first_ts, ts), min(least, value))
            for event_id, experiment, user, request, ts, items, teams, *arms in interleaved:
                kept = self._requests[experiment].get((user, request))
                if kept is None or (ts, event_id) < (kept.event_time_ms, kept.event_id):
                    shown = InterleavedExposure(user, request, tuple(items), tuple(teams), ts, event_id)
                    self._requests[experiment][(user, request)] = shown
                self._arms[experiment].add(ShownArms(Arm(*arms[:3]), Arm(*arms[3:]), user, event_id, ts))
            for _, user, request, item, metric, ts in item_outcomes:
                key = (user, request, item, metric)
                self._item_outcomes[key] = min(ts, self._item_outcomes.get(key, ts))
            for tp, offset in offsets.items():
                self._offsets[TopicPartition(*tp)] = offset

    def offsets(self) -> dict[TopicPartition, int]:
        with self._lock:
            return dict(self._offsets)

    def _stored_experiments(self) -> list[str]:
        with self._lock:
            return sorted(k for k, users in self._exposures.items() if users)

    def _states(self, experiment_key: str, window: AnalysisWindow) -> list[tuple[str, list]]:
        """(user, [first_ms, first_event_id, variant, last_ms]) of the users first exposed in ``window``, by
        user; the caller holds the lock."""
        users = self._exposures.get(experiment_key, {})
        return sorted((user, state) for user, state in users.items() if window.admits(state[0]))

    def variant_counts(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        with self._lock:
            for _, state in self._states(experiment_key, window):
                counts[state[2]] += 1
        return dict(sorted(counts.items()))

    def user_metric_values(
        self,
        experiment_key: str,
        metric: str,
        until_ms: int | None = None,
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> Iterator[tuple[str, float, int, float]]:
        until = float("inf") if until_ms is None else until_ms
        rows = []
        with self._lock:
            for user, (first_ms, _, variant, _) in self._states(experiment_key, window):
                if first_ms > until:
                    continue
                end = self._window_end(first_ms)
                total, n, pre = 0.0, 0, 0.0
                for (m, _), (ts, value) in self._outcomes.get(user, {}).items():
                    if m != metric:
                        continue
                    if ts < first_ms:
                        pre += value
                    elif ts < end and ts <= until and window.before_end(ts):
                        total += value
                        n += 1
                rows.append((variant, total, n, pre))
        return iter(rows)

    def exposure_timeline(
        self, experiment_key: str, bucket_ms: int, *, window: AnalysisWindow = ALL_TIME
    ) -> list[tuple[int, str, int]]:
        if bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
        counts: dict[tuple[int, str], int] = defaultdict(int)
        with self._lock:
            for _, (first_ms, _, variant, _) in self._states(experiment_key, window):
                counts[(first_ms // bucket_ms * bucket_ms, variant)] += 1
        return [(b, v, n) for (b, v), n in sorted(counts.items())]

    def time_range(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> tuple[int, int]:
        with self._lock:
            states = [state for _, state in self._states(experiment_key, window)]
        if not states:
            return (0, 0)
        latest = max(s[3] for s in states)
        if window.end_ms is not None:  # the analysis reads nothing at or after the end
            latest = min(latest, window.end_ms - 1)
        return (min(s[0] for s in states), latest)

    def interleaving_arms(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> list[ArmsSeen]:
        with self._lock:
            shown = list(self._arms.get(experiment_key, ()))
        return arm_pairs(shown, window)

    def preference_counts(
        self,
        experiment_key: str,
        cuts: Sequence[int | None],
        click_metric: str = "click",
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> list[PreferenceCounts]:
        with self._lock:
            requests = list(self._requests.get(experiment_key, {}).values())
            clicks = [
                Click(user, request, item, ts)
                for (user, request, item, metric), ts in self._item_outcomes.items()
                if metric == click_metric
            ]
        return preference_counts_at(*in_window(requests, clicks, window), cuts)

    def metrics(self) -> list[str]:
        with self._lock:
            return sorted({key[0] for per_user in self._outcomes.values() for key in per_user})

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "exposed_users": sum(len(u) for u in self._exposures.values()),
                "outcomes": sum(len(o) for o in self._outcomes.values()),
            }
