"""The EventStore interface: per-user exposure and outcome state, plus the Kafka offsets it reflects.

What is stored is per user, not per experiment: the user's first exposure in each experiment (variant, time),
and the user's outcome events (deduplicated by event id). Attribution happens when reading: an outcome counts
for an experiment when it falls in ``[first exposure, first exposure + attribution window)``; outcomes before
the first exposure are the user's pre-exposure values (the CUPED covariate). Because nothing is attributed on
write, the result does not depend on the order events arrive in, how partitions are spread over consumers, or
whether a consumer was killed and replayed part of a topic.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple


class TopicPartition(NamedTuple):
    """A Kafka topic partition."""

    topic: str
    partition: int


class ExposureRow(NamedTuple):
    """One exposure, as the consumer hands it to the store."""

    event_id: str
    experiment_key: str
    variant_key: str
    user_id: str
    event_time_ms: int


class OutcomeRow(NamedTuple):
    """One outcome, as the consumer hands it to the store."""

    event_id: str
    user_id: str
    metric: str
    event_time_ms: int
    value: float


class EventStore(abc.ABC):
    """Durable per-user experiment state.

    Args:
        attribution_window_ms: how long after a user's first exposure outcomes are attributed to it;
            None = no limit.
    """

    def __init__(self, attribution_window_ms: int | None = None) -> None:
        self.attribution_window_ms = attribution_window_ms

    # ---------------------------------------------------------------- writes

    @abc.abstractmethod
    def apply(
        self,
        exposures: Sequence[ExposureRow],
        outcomes: Sequence[OutcomeRow],
        offsets: Mapping[TopicPartition, int],
    ) -> None:
        """Apply events and record ``offsets`` (last applied offset per partition) atomically.

        Events whose id is already stored are ignored, so a replay never double counts.

        Raises:
            OffsetBackwards: an offset is lower than the one stored for its partition.
        """

    @abc.abstractmethod
    def offsets(self) -> dict[TopicPartition, int]:
        """Last applied offset per partition (resume from offset + 1)."""

    # ---------------------------------------------------------------- queries (used by the statistics engine)

    @abc.abstractmethod
    def experiments(self) -> list[str]:
        """Experiment keys with at least one exposure, sorted."""

    @abc.abstractmethod
    def variant_counts(self, experiment_key: str) -> dict[str, int]:
        """Users exposed per variant."""

    @abc.abstractmethod
    def user_metric_values(
        self, experiment_key: str, metric: str, until_ms: int | None = None
    ) -> Iterator[tuple[str, float, int, float]]:
        """One row per exposed user: (variant, attributed value sum, attributed event count, pre-exposure sum).

        ``until_ms`` gives the state as of that time (users first exposed later and outcomes after it are
        left out), for sequential analysis. Users without outcomes give ``(variant, 0.0, 0, 0.0)``.
        """

    @abc.abstractmethod
    def exposure_timeline(self, experiment_key: str, bucket_ms: int) -> list[tuple[int, str, int]]:
        """Newly exposed users per time bucket and variant: ``(bucket_start_ms, variant, new_users)``."""

    @abc.abstractmethod
    def time_range(self, experiment_key: str) -> tuple[int, int]:
        """(earliest, latest) exposure time of the experiment; (0, 0) when it has none."""

    @abc.abstractmethod
    def metrics(self) -> list[str]:
        """Metric names seen in outcomes, sorted."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Stored totals: ``{"exposed_users": ..., "outcomes": ...}`` (for progress and tests)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _window_end(self, first_ms: int) -> float:
        return float("inf") if self.attribution_window_ms is None else first_ms + self.attribution_window_ms
