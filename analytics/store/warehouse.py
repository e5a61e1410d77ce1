"""A store whose queries are compiled SQL (``analytics.sql_compiler``) run by an analytical engine.

Subclasses say where the raw events are (``relations``) and how to run a query (``_query``); the queries, the
attribution semantics and the decoding into statistics are shared, so DuckDB and ClickHouse answer alike.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from analytics import interleaving_sql as isql
from analytics import sql_compiler as sql
from analytics.analysis_window import ALL_TIME, AnalysisWindow
from analytics.store.base import (
    EventStore,
    ExposureColumns,
    Exposures,
    Interleaved,
    InterleavedColumns,
    ItemOutcomeColumns,
    ItemOutcomes,
    OutcomeColumns,
    Outcomes,
    _Columns,
)

if TYPE_CHECKING:
    from analytics.interleaving import ArmsSeen
    from analytics.metrics import MetricDefinition
    from analytics.stats.models.statistics import PreferenceCounts, TestStatistic


log = logging.getLogger(__name__)

EXPOSURE_SCHEMA = pa.schema(
    [("event_id", pa.string()), ("experiment", pa.string()), ("variant", pa.string()),
     ("user_id", pa.string()), ("ts", pa.int64())]
)  # fmt: skip
OUTCOME_SCHEMA = pa.schema(
    [("event_id", pa.string()), ("user_id", pa.string()), ("metric", pa.string()), ("ts", pa.int64()),
     ("value", pa.float64())]
)  # fmt: skip
INTERLEAVED_SCHEMA = pa.schema(
    [("event_id", pa.string()), ("experiment", pa.string()), ("user_id", pa.string()),
     ("request_id", pa.string()), ("ts", pa.int64()), ("item_ids", pa.list_(pa.int64())),
     ("teams", pa.list_(pa.uint8()))]
    + [(name, pa.string()) for name in isql.ARM_COLUMNS]
)  # fmt: skip
ITEM_OUTCOME_SCHEMA = pa.schema(
    [("event_id", pa.string()), ("user_id", pa.string()), ("request_id", pa.string()),
     ("item_id", pa.int64()), ("metric", pa.string()), ("ts", pa.int64())]
)  # fmt: skip


def to_arrow(columns: _Columns, schema: pa.Schema) -> pa.Table:
    """A column batch as an Arrow table with the store's column names and types."""
    arrays = [pa.array(values, f.type) for values, f in zip(columns.columns().values(), schema, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


def event_tables(
    exposures: Exposures, outcomes: Outcomes, interleaved: Interleaved, item_outcomes: ItemOutcomes
) -> Iterator[tuple[str, pa.Table]]:
    """The events of one ``apply`` as Arrow tables, by kind: ``exposures``, ``outcomes``, ``interleaved``
    and ``item_outcomes`` (the stores' table and file names); kinds without events are skipped. Each table
    is built when it is reached, so a store that writes it at once holds one at a time."""
    for kind, columns, schema in (
        ("exposures", ExposureColumns.of(exposures), EXPOSURE_SCHEMA),
        ("outcomes", OutcomeColumns.of(outcomes), OUTCOME_SCHEMA),
        ("interleaved", InterleavedColumns.of(interleaved), INTERLEAVED_SCHEMA),
        ("item_outcomes", ItemOutcomeColumns.of(item_outcomes), ITEM_OUTCOME_SCHEMA),
    ):
        if len(columns):
            yield kind, to_arrow(columns, schema)


class WarehouseEventStore(EventStore):
    """Queries of ``EventStore`` answered by compiled SQL in ``dialect``."""

    dialect: str

    @abc.abstractmethod
    def relations(self) -> sql.Relations | None:
        """Where the events are now (None: no events yet)."""

    @abc.abstractmethod
    def _query(self, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run ``query``; returns the column names and the rows."""

    @abc.abstractmethod
    def interleaving_relations(self) -> isql.InterleavingRelations | None:
        """Where the interleaved exposures and item outcomes are now (None: no interleaved exposure yet)."""

    def _run(self, build: Callable[[sql.Relations], str]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run the query ``build`` makes for the current relations (no columns and rows without events)."""
        relations = self.relations()
        if relations is None:
            return [], []
        return self._query(build(relations))

    def _rows(self, build: Callable[..., str], *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        return self._run(lambda relations: build(relations, *args, self.dialect, **kwargs))[1]

    def _stored_experiments(self) -> list[str]:
        return [r[0] for r in self._rows(sql.experiments_query)]

    def _per_first_exposure(
        self, build: Callable[..., str], *args: Any, **kwargs: Any
    ) -> list[tuple[Any, ...]]:
        """Rows of a count of first exposures (the last two columns: users, key clashes), by user key or, when a
        key stands for two user ids, by user id."""
        rows = self._rows(build, *args, **kwargs)
        if any(row[-1] for row in rows):
            log.warning("a user key stands for two user ids; counting by user id")
            rows = self._run(lambda r: build(r.by_user_id(), *args, self.dialect, **kwargs))[1]
        return [row[:-1] for row in rows]

    def variant_counts(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> dict[str, int]:
        rows = self._per_first_exposure(sql.variant_counts_query, experiment_key, window=window)
        return {v: int(n) for v, n in rows}

    def variant_counts_by_experiment(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for key, variant, users in self._per_first_exposure(sql.experiment_variant_counts_query):
            counts.setdefault(key, {})[variant] = int(users)
        return {key: counts[key] for key in self._analysable(list(counts))}

    def user_metric_values(
        self,
        experiment_key: str,
        metric: str,
        until_ms: int | None = None,
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> Iterator[tuple[str, float, int, float]]:
        rows = self._rows(
            sql.compile_user_rows, experiment_key, metric, until_ms, self.attribution_window_ms, window=window
        )
        return iter([(v, float(s), int(n), float(p)) for v, s, n, p in rows])

    def metric_statistics(
        self,
        experiment_key: str,
        metrics: Sequence[MetricDefinition],
        cuts: Sequence[int | None],
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> list[list[dict[str, TestStatistic]]]:
        if not metrics:
            return [[] for _ in cuts]
        try:
            return self._statistics(experiment_key, metrics, cuts, window, by_user_id=False)
        except sql.KeyClash:  # astronomically rare with 64-bit keys, but then exact all the same
            log.warning(
                "experiment %s: a user key stands for two user ids; rerunning by user id", experiment_key
            )
            return self._statistics(experiment_key, metrics, cuts, window, by_user_id=True)

    def _statistics(
        self,
        experiment_key: str,
        metrics: Sequence[MetricDefinition],
        cuts: Sequence[int | None],
        window: AnalysisWindow,
        by_user_id: bool,
    ) -> list[list[dict[str, TestStatistic]]]:
        compiled: list[sql.CompiledReport] = []

        def build(relations: sql.Relations) -> str:
            relations = relations.by_user_id() if by_user_id else relations
            compiled[:] = [
                sql.compile_report(
                    relations, experiment_key, metrics, cuts, self.attribution_window_ms, self.dialect, window
                )
            ]
            return compiled[0].sql

        columns, rows = self._run(build)
        if not compiled:
            return [[{} for _ in metrics] for _ in cuts]
        return compiled[0].decode(columns, rows)

    def exposure_timeline(
        self, experiment_key: str, bucket_ms: int, *, window: AnalysisWindow = ALL_TIME
    ) -> list[tuple[int, str, int]]:
        if bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
        rows = self._per_first_exposure(sql.exposure_timeline_query, experiment_key, bucket_ms, window=window)
        return [(int(b) * bucket_ms, v, int(n)) for b, v, n in rows]

    def time_range(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> tuple[int, int]:
        rows = self._rows(sql.time_range_query, experiment_key, window=window)
        if not rows or rows[0][0] is None:
            return (0, 0)
        return (int(rows[0][0]), int(rows[0][1]))

    def _interleaving_run(
        self, build: Callable[[isql.InterleavingRelations], str]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run the query ``build`` makes for the interleaving relations (no columns and rows without any)."""
        if self.interleaving_relations() is None:
            return [], []

        def query(_: sql.Relations) -> str:
            # Built again inside ``_run`` (which may retry on fresh relations); once present they never go away.
            relations = self.interleaving_relations()
            assert relations is not None
            return build(relations)

        return self._run(query)

    def interleaving_arms(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> list[ArmsSeen]:
        _, rows = self._interleaving_run(lambda r: isql.arms_query(r, experiment_key, self.dialect, window))
        return isql.decode_arms(rows)

    def interleaving_experiments(self) -> set[str]:
        _, rows = self._interleaving_run(lambda r: isql.experiments_query(r, self.dialect))
        return {row[0] for row in rows}

    def preference_counts(
        self,
        experiment_key: str,
        cuts: Sequence[int | None],
        click_metric: str = "click",
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> list[PreferenceCounts]:
        compiled: list[isql.CompiledPreferences] = []

        def build(relations: isql.InterleavingRelations) -> str:
            query = isql.compile_preferences(
                relations, experiment_key, cuts, click_metric, self.dialect, window
            )
            compiled[:] = [query]
            return compiled[0].sql

        columns, rows = self._interleaving_run(build)
        if not compiled:
            return isql.CompiledPreferences("", tuple(cuts)).decode([], [])
        return compiled[0].decode(columns, rows)

    def metrics(self) -> list[str]:
        return [r[0] for r in self._rows(sql.metrics_query)]

    def counts(self) -> dict[str, int]:
        rows = self._rows(sql.counts_query)
        if not rows:
            return {"exposed_users": 0, "outcomes": 0}
        return {"exposed_users": int(rows[0][0]), "outcomes": int(rows[0][1])}
