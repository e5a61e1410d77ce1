"""An in-memory event store with exactly the API ``analytics.metrics.EventStore`` reads (not Kafka).

Semantics the real store must share: a user's variant is that of their first exposure; outcomes at or after
that exposure count towards ``value_sum``/``event_count``, earlier ones towards ``pre_value_sum``;
``until_ms`` keeps users first exposed and events at or before it; rows come in a stable user order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class FakeStore:
    exposures: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    outcomes: list[tuple[str, str, float, int]] = field(default_factory=list)

    def expose(self, experiment_key: str, user_id: str, variant_key: str, time_ms: int) -> None:
        users = self.exposures.setdefault(experiment_key, {})
        if user_id not in users or time_ms < users[user_id][1]:
            users[user_id] = (variant_key, time_ms)

    def outcome(self, user_id: str, metric: str, value: float, time_ms: int) -> None:
        self.outcomes.append((user_id, metric, value, time_ms))

    def experiments(self) -> list[str]:
        return sorted(self.exposures)

    def variant_counts(self, experiment_key: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for variant, _ in self.exposures.get(experiment_key, {}).values():
            counts[variant] = counts.get(variant, 0) + 1
        return counts

    def user_metric_values(
        self, experiment_key: str, metric: str, until_ms: int | None = None
    ) -> Iterator[tuple[str, float, int, float]]:
        users = self.exposures.get(experiment_key, {})
        post: dict[str, list[float]] = {}
        pre: dict[str, float] = {}
        for user_id, name, value, time_ms in self.outcomes:
            if name != metric or user_id not in users or (until_ms is not None and time_ms > until_ms):
                continue
            if time_ms >= users[user_id][1]:
                post.setdefault(user_id, []).append(value)
            else:
                pre[user_id] = pre.get(user_id, 0.0) + value
        for user_id in sorted(users):
            variant, exposed_ms = users[user_id]
            if until_ms is not None and exposed_ms > until_ms:
                continue
            values = post.get(user_id, [])
            yield variant, float(sum(values)), len(values), pre.get(user_id, 0.0)

    def exposure_timeline(self, experiment_key: str, bucket_ms: int) -> list[tuple[int, str, int]]:
        buckets: dict[tuple[int, str], int] = {}
        for variant, time_ms in self.exposures.get(experiment_key, {}).values():
            key = (time_ms // bucket_ms * bucket_ms, variant)
            buckets[key] = buckets.get(key, 0) + 1
        return [(start, variant, n) for (start, variant), n in sorted(buckets.items())]

    def time_range(self, experiment_key: str) -> tuple[int, int]:
        times = [t for _, t in self.exposures.get(experiment_key, {}).values()]
        times += [
            t for user_id, _, _, t in self.outcomes if user_id in self.exposures.get(experiment_key, {})
        ]
        return min(times), max(times)
