"""The EventStore interface: exposure and outcome events, plus the Kafka offsets they reflect.

What is stored are the events themselves: exposures and outcomes, appended as they come. The user's first exposure
in each experiment (variant, time) and the deduplication of outcomes by event id are computed when reading
(the DuckDB and ClickHouse stores) or kept on write (the in-memory reference). Attribution happens when reading
too: an outcome counts for an experiment when it falls in ``[first exposure, first exposure + attribution
window)``; outcomes before the first exposure are the user's pre-exposure values (the CUPED covariate). Because
nothing is attributed on write, the result does not depend on the order events arrive in, how partitions are spread over consumers, or
whether a consumer was killed and replayed part of a topic.

Interleaving experiments add two kinds of rows: the lists of each interleaved exposure (items shown and the arm
that supplied each) and the outcomes that name a request and item; their clicks are credited to the arms when
reading too (``preference_counts``).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, NamedTuple

from analytics.analysis_window import ALL_TIME, AnalysisWindow
from analytics.store.exceptions import OffsetBackwards
from proto import limits

if TYPE_CHECKING:
    from analytics.interleaving import ArmsSeen
    from analytics.metrics import MetricDefinition
    from analytics.stats.models.statistics import PreferenceCounts, TestStatistic

log = logging.getLogger(__name__)


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


@dataclass
class _Columns:
    """Events as one list per field: what the consumer decodes into and the columnar stores append.

    Iterating yields row tuples, so a row store consumes a column batch like a list of rows.
    """

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))

    def __iter__(self) -> Iterator[tuple]:
        return zip(*(getattr(self, f.name) for f in fields(self)), strict=True)

    def append(self, row: Sequence) -> None:
        """Add one event given in row order."""
        for append, value in zip(self.appenders(), row, strict=True):
            append(value)

    def appenders(self) -> tuple[Callable[[object], None], ...]:
        """The ``append`` of every column, in field order (bound once per batch: decoding calls them per event)."""
        cached = self.__dict__.get("_appenders")
        if cached is None:
            cached = self.__dict__["_appenders"] = tuple(getattr(self, f.name).append for f in fields(self))
        return cached

    def columns(self) -> dict[str, list]:
        """Field name -> values."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of(cls, events: Iterable[Sequence]) -> _Columns:
        """``events`` as columns (returned as is when it already is a batch of this kind)."""
        if isinstance(events, cls):
            return events
        batch = cls()
        for row in events:
            batch.append(row)
        return batch


@dataclass
class ExposureColumns(_Columns):
    """Exposures column by column, in ``ExposureRow`` field order."""

    event_id: list[str] = field(default_factory=list)
    experiment_key: list[str] = field(default_factory=list)
    variant_key: list[str] = field(default_factory=list)
    user_id: list[str] = field(default_factory=list)
    event_time_ms: list[int] = field(default_factory=list)


@dataclass
class OutcomeColumns(_Columns):
    """Outcomes column by column, in ``OutcomeRow`` field order."""

    event_id: list[str] = field(default_factory=list)
    user_id: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    event_time_ms: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)


class InterleavedRow(NamedTuple):
    """The lists of one interleaved exposure: the items shown in order, each one's team (0 = arm A, the
    experiment's first arm; 1 = arm B), and both arms (variation key, model name, model version)."""

    event_id: str
    experiment_key: str
    user_id: str
    request_id: str
    event_time_ms: int
    item_ids: Sequence[int]
    teams: Sequence[int]
    arm_a_key: str
    arm_a_model: str
    arm_a_version: str
    arm_b_key: str
    arm_b_model: str
    arm_b_version: str


@dataclass
class InterleavedColumns(_Columns):
    """Interleaved exposures (schema version 2) column by column, in ``InterleavedRow`` field order."""

    event_id: list[str] = field(default_factory=list)
    experiment_key: list[str] = field(default_factory=list)
    user_id: list[str] = field(default_factory=list)
    request_id: list[str] = field(default_factory=list)
    event_time_ms: list[int] = field(default_factory=list)
    item_ids: list[list[int]] = field(default_factory=list)
    teams: list[list[int]] = field(default_factory=list)
    arm_a_key: list[str] = field(default_factory=list)
    arm_a_model: list[str] = field(default_factory=list)
    arm_a_version: list[str] = field(default_factory=list)
    arm_b_key: list[str] = field(default_factory=list)
    arm_b_model: list[str] = field(default_factory=list)
    arm_b_version: list[str] = field(default_factory=list)


class ItemOutcomeRow(NamedTuple):
    """An outcome that names the request it follows from (and, for clicks, the item): what interleaving credits."""

    event_id: str
    user_id: str
    request_id: str
    item_id: int
    metric: str
    event_time_ms: int


@dataclass
class ItemOutcomeColumns(_Columns):
    """Item outcomes column by column, in ``ItemOutcomeRow`` field order."""

    event_id: list[str] = field(default_factory=list)
    user_id: list[str] = field(default_factory=list)
    request_id: list[str] = field(default_factory=list)
    item_id: list[int] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    event_time_ms: list[int] = field(default_factory=list)


Exposures = Sequence[ExposureRow] | ExposureColumns
Outcomes = Sequence[OutcomeRow] | OutcomeColumns
Interleaved = Sequence[InterleavedRow] | InterleavedColumns
ItemOutcomes = Sequence[ItemOutcomeRow] | ItemOutcomeColumns


class EventStore(abc.ABC):
    """Exposure and outcome events, the Kafka offsets they bring the store to, and the queries analysis needs.

    Args:
        attribution_window_ms: how long after a user's first exposure outcomes are attributed to it;
            None = no limit.
    """

    def __init__(self, attribution_window_ms: int | None = None) -> None:
        self.attribution_window_ms = attribution_window_ms
        self._left_out = 0  # stored experiment keys too long to analyse, when last counted

    # ---------------------------------------------------------------- writes

    @abc.abstractmethod
    def apply(
        self,
        exposures: Exposures,
        outcomes: Outcomes,
        offsets: Mapping[TopicPartition, int],
        *,
        interleaved: Interleaved = (),
        item_outcomes: ItemOutcomes = (),
    ) -> None:
        """Apply events (rows or column batches) and record ``offsets`` (last applied offset per partition)
        atomically.

        Events whose id is already stored never count twice, so a replay is harmless. An interleaved exposure
        (schema version 2) comes twice: as an exposure of variant ``"interleaved"`` in ``exposures`` (it counts
        as the user's exposure like any other) and with its lists in ``interleaved``. An outcome that names a
        request comes in ``outcomes`` and again in ``item_outcomes`` (for the credit of interleaving clicks).

        Raises:
            OffsetBackwards: an offset is lower than the one stored for its partition.
        """

    @staticmethod
    def _refuse_offsets_behind(
        offsets: Mapping[TopicPartition, int], applied: Mapping[TopicPartition, int]
    ) -> None:
        """What ``apply`` checks before it writes anything: no offset is behind the one ``applied`` (stored)
        for its partition.

        Raises:
            OffsetBackwards: the first offset that is.
        """
        for tp, offset in offsets.items():
            stored = applied.get(TopicPartition(*tp))
            if stored is not None and offset < stored:
                raise OffsetBackwards(
                    f"{tp[0]}[{tp[1]}]: offset {offset} is behind the applied offset {stored}"
                )

    @abc.abstractmethod
    def offsets(self) -> dict[TopicPartition, int]:
        """Last applied offset per partition (resume from offset + 1)."""

    # ---------------------------------------------------------------- queries (used by the statistics engine)

    def experiments(self) -> list[str]:
        """Experiment keys with at least one exposure, sorted.

        Keys longer than the contract admits (``proto.limits.MAX_NAME_BYTES``) are left out, with a warning
        when their number changes: any producer writes exposure events, and a store may hold events no reader
        checked (written before readers checked sizes, or by other means). A 1 MB key (it fits in a Kafka
        record) went into every query of its experiment, beyond ClickHouse's ``max_query_size`` (256 KiB), so
        one such event failed the dashboard's experiment list.
        """
        return self._analysable(self._stored_experiments())

    def _analysable(self, stored: Sequence[str]) -> list[str]:
        """The ``stored`` experiment keys that ``experiments`` lists, in their order (see there)."""
        keys = [key for key in stored if limits.oversized({"key": key}, limits.MAX_NAME_BYTES) is None]
        if len(stored) - len(keys) != self._left_out:
            self._left_out = len(stored) - len(keys)
            log.warning(
                "%d experiment keys of exposure events are not analysed: longer than %d bytes (UTF-8)",
                self._left_out,
                limits.MAX_NAME_BYTES,
            )
        return keys

    @abc.abstractmethod
    def _stored_experiments(self) -> list[str]:
        """Every experiment key with at least one exposure, sorted."""

    def variant_counts_by_experiment(self) -> dict[str, dict[str, int]]:
        """``variant_counts`` (all time) of every experiment ``experiments`` lists, in its order.

        What the dashboard's experiment list needs. Experiment keys come from events any producer writes, so
        warehouse stores answer in one query: one per key made 500 keys of one exposure each cost 2 s a
        listing. This reference asks per experiment.
        """
        return {key: self.variant_counts(key) for key in self.experiments()}

    def interleaving_experiments(self) -> set[str]:
        """The experiment keys with an interleaved exposure: those whose ``interleaving_arms`` (all time) are
        not empty (one query in warehouse stores, as ``variant_counts_by_experiment``)."""
        return {key for key in self.experiments() if self.interleaving_arms(key)}

    @abc.abstractmethod
    def variant_counts(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> dict[str, int]:
        """Users exposed per variant (first exposed in ``window``: see ``analytics.analysis_window``; every query
        that takes a window reads only its users, and their outcomes before its end)."""

    @abc.abstractmethod
    def user_metric_values(
        self,
        experiment_key: str,
        metric: str,
        until_ms: int | None = None,
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> Iterator[tuple[str, float, int, float]]:
        """One row per exposed user: (variant, attributed value sum, attributed event count, pre-exposure sum).

        ``until_ms`` gives the state as of that time (users first exposed later and outcomes after it are
        left out), for sequential analysis. Users without outcomes give ``(variant, 0.0, 0, 0.0)``.
        """

    def metric_statistics(
        self,
        experiment_key: str,
        metrics: Sequence[MetricDefinition],
        cuts: Sequence[int | None],
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> list[list[dict[str, TestStatistic]]]:
        """Per-variant sufficient statistics of every metric at every cut point: ``[cut][metric]``.

        A cut is ``until_ms`` as in ``user_metric_values`` (None: everything). This default walks the
        per-user rows in Python, once per cut and metric (the reference); warehouse stores override it with
        one compiled SQL query for all metrics and cuts.
        """
        from analytics.metrics import aggregate

        return [
            [aggregate(metric, self, experiment_key, cut, window=window) for metric in metrics]
            for cut in cuts
        ]

    @abc.abstractmethod
    def exposure_timeline(
        self, experiment_key: str, bucket_ms: int, *, window: AnalysisWindow = ALL_TIME
    ) -> list[tuple[int, str, int]]:
        """Newly exposed users per time bucket and variant: ``(bucket_start_ms, variant, new_users)``; a user
        counts in the bucket ``[start, start + bucket_ms)`` of their first exposure, ``start`` a multiple of
        ``bucket_ms`` (``first_ms // bucket_ms * bucket_ms``, rounded down before 1970 too)."""

    @abc.abstractmethod
    def time_range(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> tuple[int, int]:
        """(earliest, latest) exposure time of the experiment; (0, 0) when it has none. In a bounded ``window``:
        of the exposures of its users, the latest cut to ``end_ms - 1`` (the analysis reads nothing later)."""

    @abc.abstractmethod
    def metrics(self) -> list[str]:
        """Metric names seen in outcomes, sorted."""

    @abc.abstractmethod
    def interleaving_arms(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> list[ArmsSeen]:
        """The arm pairs the experiment's interleaved exposures named, most exposures first (empty: the
        experiment has no interleaved exposure, it is not an interleaving experiment); in a bounded
        ``window``, those of the exposures its analysis reads (rule 6 of ``analytics.interleaving``; possibly
        none)."""

    @abc.abstractmethod
    def preference_counts(
        self,
        experiment_key: str,
        cuts: Sequence[int | None],
        click_metric: str = "click",
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> list[PreferenceCounts]:
        """Per cut, the interleaving preference of the experiment's users (``analytics.interleaving``'s rules,
        with ``click_metric`` outcomes as clicks; rule 5 for ``window``).

        At a cut ``c`` (None: everything) a request counts when its first exposure is at or before ``c``, a
        click when it is too (at or before ``c``); users count from their first interleaved exposure on.
        The attribution window does not apply: a click counts for the request it names.
        """

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
