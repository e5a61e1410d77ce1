"""Metric definitions compiled to SQL: one query per experiment for every metric and every timeline cut point.

The analysis runs where the events are. A query built here reads the raw, append-only event tables

- ``exposures(event_id, experiment, variant, user_id, ts)``
- ``outcomes(event_id, user_id, metric, ts, value)``

and returns one row per variant holding the sufficient statistics of every metric at every cut point; Python only
turns those sums into ``TestStatistic`` objects for ``analyse_metrics`` / ``compare_to_control``. The semantics
are those of ``MemoryEventStore``'s row path, which is the reference the tests compare against:

- a user's first exposure is the earliest ``(ts, event_id)``; its variant is the user's variant;
- outcomes are deduplicated by event id (key ``(event_id, user_id, metric)``: an event's time is the earliest of
  its copies', its value the smallest, so a client's retry with the event's id counts once), then attributed to
  the user when ``first_ms <= ts < first_ms + window``; outcomes before the first exposure are the pre-exposure
  covariate (CUPED);
- at a cut point ``c`` only users with ``first_ms <= c`` and outcomes with ``ts <= c`` count;
- in an analysis window ``[start, end)`` (``analytics.analysis_window``) only users with
  ``start <= first_ms < end`` and outcomes with ``ts < end`` count (the end is one more boundary of
  attribution, like the attribution window's).

The query is built with sqlglot expressions (never by pasting strings) and rendered per engine by a dialect
(``DIALECTS``: DuckDB and ClickHouse). A store may also hand it *rolled parts* (``RolledPart``): compacted events
with their rollups, one row per user (first exposures) and per user and hour (outcome counts, sums and time
ranges, split at the user's first exposure); the query then reads about one row per user instead of one per event.
Its stages, each a CTE with every column aliased:

1. ``fe``: per exposed user key, variant, first exposure time and first cut (``first_exposure``: the largest
   rolled part's rows joined to the rest's, grouped per user);
2. ``classified`` (with rolled parts): each rolled-up row of an exposed user with its contribution to each
   measure, and whether it is *clean*: all its events on one side of every boundary of the query (first exposure,
   window end, cut points), checked on its time range. A row that is not clean is read back raw;
3. ``rows``: per user, rows tagged with the cut from which they count (``at``): the clean rolled-up rows, and the
   raw events (of unclean rows, of outcome names not rolled up, of parts not compacted yet: deduplicated by
   event id, and without events a compacted part already holds), summed per user and cut;
4. several cuts: ``cum``, a window over each user's few rows that cumulates them; per variant and cut each row
   adds the change it makes to every summed expression and each user its start, so the work grows with users
   and their change rows, never users x cuts or events x cuts;
5. ``caps``: exact quantiles per cut for winsorisation (``quantile_cont`` / ``quantileExactInclusive``, numpy's
   linear method), over all users in the cut; users clipped at some cut are summed cut by cut;
6. the final ``SELECT``: per variant and cut, the sums each metric kind needs, and the user count.

Rolled-up rows are used only where they give exactly what their raw events would (integer counts; sums of the
same values in another order), so rollups change no statistic beyond the summation order below.

Determinism: counts, binomial and count statistics are integer sums and come out bit-identical to the Python
reference. Sums of real values (continuous, winsorised, CUPED, ratios of sums) are summed by the engine's
parallel aggregation, whose order varies with threads and data layout, so they can move in the 13th significant
digit between engines or runs (tests compare at 1e-9 relative).

Extension point: a metric kind (``MetricKind``) says which per-user measures it needs (``Need``), which per-user
expressions to sum per variant and cut, and how to turn the sums into a ``TestStatistic``. Register a new one with
``register_kind``; nothing else in the compiler changes. A kind that needs another per-user measure registers it
in ``MEASURES`` (the contribution of one event row, and whether it counts when attributed or before exposure).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from sqlglot import exp
from sqlglot.dialects.clickhouse import ClickHouse
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.generators.clickhouse import ClickHouseGenerator
from sqlglot.generators.duckdb import DuckDBGenerator

from analytics.analysis_window import ALL_TIME, AnalysisWindow
from analytics.metrics import MetricDefinition
from analytics.stats.models.statistics import CupedMean, Proportion, Ratio, SampleMean, TestStatistic

Measure = Literal["count", "sum", "pre"]


class ExactQuantile(exp.Expression, exp.AggFunc):
    """The exact (linearly interpolated, numpy's default) quantile of ``this`` at ``quantile``."""

    arg_types = {"this": True, "quantile": True}


class DuckDBDialect(DuckDB):
    """DuckDB: ``quantile_cont``."""

    # the class ``DuckDB.Generator`` names (a type checker reads that alias as a variable, not as a base class)
    class Generator(DuckDBGenerator):
        TRANSFORMS = {
            **DuckDBGenerator.TRANSFORMS,
            ExactQuantile: lambda self, e: self.func("quantile_cont", e.this, e.args["quantile"]),
        }


class ClickHouseDialect(ClickHouse):
    """ClickHouse: ``quantileExactInclusive`` (numpy's linear method), ``intDiv``."""

    class Generator(ClickHouseGenerator):  # the class ``ClickHouse.Generator`` names (see DuckDBDialect)
        TRANSFORMS = {
            **ClickHouseGenerator.TRANSFORMS,
            ExactQuantile: lambda self, e: (
                f"quantileExactInclusive({self.sql(e, 'quantile')})({self.sql(e, 'this')})"
            ),
            exp.IntDiv: lambda self, e: self.func("intDiv", e.this, e.expression),
        }


DIALECTS: dict[str, type[DuckDB] | type[ClickHouse]] = {
    "duckdb": DuckDBDialect,
    "clickhouse": ClickHouseDialect,
}


# ---------------------------------------------------------------- small builders


def _lit(value: Any) -> exp.Expr:
    if isinstance(value, str):
        return exp.Literal.string(value)
    return exp.Literal.number(value)


def _col(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table=table)


def _case(condition: exp.Expr, then: exp.Expr, otherwise: exp.Expr | None) -> exp.Case:
    case = exp.case().when(condition, then)
    return case.else_(otherwise) if otherwise is not None else case


def _sum_if(condition: exp.Expr, value: exp.Expr) -> exp.Sum:
    return exp.Sum(this=_case(condition, value, _lit(0)))


def _first_cut_at_or_after(column: exp.Expr, cuts: Sequence[int | None]) -> exp.Expr:
    """Index of the first cut ``c`` with ``column <= c`` (None = no bound); ``len(cuts)`` when there is none."""
    bounded = [c for c in cuts if c is not None]
    beyond = len(bounded) if len(bounded) == len(cuts) else len(cuts) - 1
    if not bounded:
        return _lit(beyond)
    case = exp.case()
    for j, cut in enumerate(bounded):
        case = case.when(exp.LTE(this=column.copy(), expression=_lit(cut)), _lit(j))
    return case.else_(_lit(beyond))


def _in_window(first_ms: exp.Expr, window: AnalysisWindow) -> list[exp.Expr]:
    """The conditions that keep a user first exposed at ``first_ms`` in ``window`` (none without bounds)."""
    conditions: list[exp.Expr] = []
    if window.start_ms is not None:
        conditions.append(exp.GTE(this=first_ms.copy(), expression=_lit(window.start_ms)))
    if window.end_ms is not None:
        conditions.append(exp.LT(this=first_ms.copy(), expression=_lit(window.end_ms)))
    return conditions


def _and(*conditions: exp.Expr) -> exp.Expr:
    return exp.and_(*conditions, copy=False)


def _or(*conditions: exp.Expr) -> exp.Expr:
    return exp.or_(*conditions, copy=False)


def _any_set(columns: Iterable[exp.Expr]) -> exp.Expr:
    """True when one of ``columns`` is not NULL (a rolled-up row's name or half that had an event)."""
    return _or(*(exp.Not(this=exp.Is(this=c, expression=exp.Null())) for c in columns))


def _least(values: Sequence[exp.Expr]) -> exp.Expr:
    """The smallest of ``values`` (none of them NULL)."""
    first, *rest = values
    return exp.Least(this=first, expressions=rest, ignore_nulls=True) if rest else first


def _greatest(values: Sequence[exp.Expr]) -> exp.Expr:
    """The largest of ``values`` (none of them NULL)."""
    first, *rest = values
    return exp.Greatest(this=first, expressions=rest, ignore_nulls=True) if rest else first


def _bigint(value: int) -> exp.Expr:
    """An integer literal typed as a 64-bit integer in every engine (ClickHouse would read a large one unsigned)."""
    return exp.Cast(this=_lit(value), to=exp.DataType.build("bigint"))


def _over(function: exp.Expr, partition: Sequence[exp.Expr], order: exp.Expr | None = None,
          running: bool = False) -> exp.Window:  # fmt: skip
    """``function OVER (PARTITION BY partition [ORDER BY order [ROWS UNBOUNDED PRECEDING .. CURRENT ROW]])``."""
    spec = None
    if running:
        spec = exp.WindowSpec(kind="ROWS", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW")
    return exp.Window(
        this=function,
        partition_by=[p.copy() for p in partition],
        order=exp.Order(expressions=[exp.Ordered(this=order.copy())]) if order is not None else None,
        spec=spec,
    )


def _cuts_relation(count: int) -> exp.Query:
    """``SELECT 0 AS j UNION ALL SELECT 1 AS j ...``: the cut indexes (portable: no VALUES table syntax)."""
    return _union_all([exp.select(exp.alias_(_lit(j), "j"), copy=False) for j in range(count)])


def _union_all(selects: Sequence[exp.Query]) -> exp.Query:
    relation = selects[0]
    for select in selects[1:]:
        relation = exp.union(relation, select, distinct=False, copy=False)
    return relation


# ---------------------------------------------------------------- what the query reads


_EXPOSURE_COLUMNS = ("event_id", "experiment", "variant", "user_id", "ts")
_OUTCOME_COLUMNS = ("event_id", "user_id", "metric", "ts", "value")
_TS_MIN, _TS_MAX = -(2**63), 2**63 - 1
"""The range of a 64-bit timestamp: where a rolled-up outcome name has no event in a half, it takes no part in
the half's time range (any time is a time: a sentinel inside the range dropped the events beyond it)."""


@dataclass(frozen=True)
class RolledPart:
    """A compacted part of the events and its rollups (see ``exposure_rollup`` and ``outcome_rollup``).

    ``outcomes`` holds no two rows of one event (``(event_id, user_id, metric)``: the deduplication key), and
    none of an event in another rolled part or in ``Relations.outcomes_unique``; ``outcome_rollup`` sums
    exactly those rows of the ``metrics`` it lists (the rolled-up column ``before_n0`` is of ``metrics[0]``,
    and so on); ``first_exposures`` rolls up ``exposures``.
    Queries read the raw ``outcomes`` only for the rolled-up rows a query's boundaries cut through, and for the
    outcome names the rollup does not list.
    """

    exposures: exp.Expr
    outcomes: exp.Expr
    first_exposures: exp.Expr
    outcome_rollup: exp.Expr
    metrics: tuple[str, ...]
    bucket_ms: int


@dataclass(frozen=True)
class Relations:
    """Where the events are, as relations usable in FROM.

    Outcomes may come in several parts: ``outcomes_unique`` holds no two rows of one event (a compacted part,
    deduplicated when written); ``outcomes_raw`` may (fresh appends, or a server table); each rolled part
    (``rollups``) holds unique outcomes too, none of them in another rolled part or in ``outcomes_unique``. The
    query deduplicates ``outcomes_raw`` and drops its events already in a unique part. ``exposures`` are the raw
    exposures that are not in a rolled part (None: there are none).
    """

    exposures: exp.Expr | None
    outcomes_unique: exp.Expr | None = None
    outcomes_raw: exp.Expr | None = None
    user_key: str = "user_id"
    """The column users are grouped and joined by: ``user_id``, or an integer hash of it in both relations
    (much faster to join than text). With a hash key, ``user_check`` is a second, independent hash of the id in
    both relations: a key standing for two user ids shows as two checks and raises ``KeyClash``."""
    user_check: str | None = None
    rollups: tuple[RolledPart, ...] = ()
    """The rolled parts, the one with the most exposures first (its first exposures are joined to the rest's)."""

    @property
    def keyed(self) -> bool:
        """True when users are joined by a hash key rather than by ``user_id`` itself."""
        return self.user_key != "user_id"

    def by_user_id(self) -> Relations:
        """The same events as raw relations joined by ``user_id`` (the fallback after a ``KeyClash``; rollups are
        keyed, so their parts are read raw)."""
        exposures = [r.exposures for r in self.rollups] + (
            [self.exposures] if self.exposures is not None else []
        )
        unique = [r.outcomes for r in self.rollups]
        unique += [self.outcomes_unique] if self.outcomes_unique is not None else []

        def union(relations: list[exp.Expr], columns: Sequence[str]) -> exp.Expr | None:
            if len(relations) <= 1:
                return relations[0] if relations else None
            return _union_all([exp.select(*columns).from_(_from(r)) for r in relations])

        return Relations(
            exposures=union(exposures, _EXPOSURE_COLUMNS),
            outcomes_unique=union(unique, _OUTCOME_COLUMNS),
            outcomes_raw=self.outcomes_raw,
        )


class KeyClash(RuntimeError):
    """Two different user ids share a hash key in this query: rerun it with ``Relations.by_user_id()``."""


def _from(relation: exp.Expr, alias: str | None = None) -> exp.Expr:
    relation = relation.copy()
    if isinstance(relation, exp.Query):
        return relation.subquery(alias)
    if isinstance(relation, exp.Func):  # a table function, e.g. read_parquet([...])
        relation = exp.Table(this=relation)
    if alias:
        relation.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    return relation


def first_exposure(relations: Relations, experiment_key: str | None) -> exp.Select:
    """Per exposed user: ``k`` (the user key), ``variant``, ``first_ms`` (the earliest ``(ts, event_id)`` wins);
    with a hash key also ``check_lo`` and ``check_hi``, the user check's range (different when two users share
    the key). ``experiment_key`` None: per experiment and exposed user of every experiment, in one query (the
    dashboard's list: experiment keys come from events, one query per key cost seconds), with ``experiment``.

    A rolled part's first exposures are one row per user already. The first rolled part (the largest) is joined
    to the first exposures of everything else, grouped per user: grouping the largest part's rows with the rest
    would cost as much as having no rollup at all."""
    # Sources name their columns apart from the output's: ClickHouse lets an output alias shadow a column.
    every = experiment_key is None
    is_experiment = exp.true() if every else exp.EQ(this=_col("experiment"), expression=_lit(experiment_key))
    keyed = relations.keyed
    experiment = ("experiment",) if every else ()
    names = (*(("x",) if every else ()), *_FIRST_NAMES[: 6 if keyed else 4])
    sources = []
    for part in relations.rollups:
        columns = [
            *experiment,
            "user_key",
            "variant",
            "first_ms",
            "first_event_id",
            *(("check_lo", "check_hi") if keyed else ()),
        ]
        sources.append(_first_exposure_source(part.first_exposures, columns, names, is_experiment))
    if relations.exposures is not None:
        check = relations.user_check or ""
        columns = [
            *experiment,
            relations.user_key,
            "variant",
            "ts",
            "event_id",
            *((check, check) if keyed else ()),
        ]
        sources.append(_first_exposure_source(relations.exposures, columns, names, is_experiment))
    if not sources:  # no exposures at all
        sources.append(_first_exposure_source(_no_rows(names), names, names, exp.true()))
    outputs = {
        n: out
        for n, out in zip(("x", "k", "v", "t", "clo", "chi"), ("experiment", *_FIRST_OUTPUTS), strict=True)
        if n in names
    }
    if len(sources) == 1 and relations.rollups:  # one rollup: one row per user already
        return exp.select(*(exp.alias_(_col(n), out) for n, out in outputs.items())).from_(
            sources[0].subquery("r")
        )
    if not relations.rollups:
        return _earliest_per_user(sources, outputs)
    largest = exp.select(*(exp.alias_(_col(n), f"b{n}") for n in names)).from_(sources[0].subquery("l"))
    rest = _earliest_per_user(sources[1:], {n: f"r{n}" for n in names})
    b, r = (lambda n: _col(f"b{n}")), (lambda n: _col(f"r{n}"))
    base_first = _or(
        exp.Is(this=r("k"), expression=exp.Null()),
        _and(
            exp.Not(this=exp.Is(this=b("k"), expression=exp.Null())),
            _or(exp.LT(this=b("t"), expression=r("t")),
                _and(exp.EQ(this=b("t"), expression=r("t")), exp.LTE(this=b("id"), expression=r("id")))),
        ),
    )  # fmt: skip
    same_user = exp.EQ(this=b("k"), expression=r("k"))
    columns = [
        *([exp.alias_(exp.Coalesce(this=b("x"), expressions=[r("x")]), "experiment")] if every else []),
        exp.alias_(exp.Coalesce(this=b("k"), expressions=[r("k")]), "k"),
        exp.alias_(_case(base_first.copy(), b("v"), r("v")), "variant"),
        exp.alias_(_case(base_first, b("t"), r("t")), "first_ms"),
    ]
    if keyed:  # either side may be missing (NULL)
        for name, pick, out in (("clo", _least, "check_lo"), ("chi", _greatest, "check_hi")):
            both = [exp.Coalesce(this=b(name), expressions=[r(name)]),
                    exp.Coalesce(this=r(name), expressions=[b(name)])]  # fmt: skip
            columns.append(exp.alias_(pick(both), out))
    return (
        exp.select(*columns, copy=False)
        .from_(largest.subquery("b"), copy=False)
        .join(
            rest.subquery("r"),
            on=_and(same_user, exp.EQ(this=b("x"), expression=r("x"))) if every else same_user,
            join_type="full",
            copy=False,
        )
    )


_FIRST_NAMES = ("k", "v", "t", "id", "clo", "chi")
"""A first-exposure source's columns: key, variant, time, event id, and the user check's range."""
_FIRST_OUTPUTS = ("k", "variant", "first_ms", "check_lo", "check_hi")


def _earliest_per_user(sources: Sequence[exp.Select], outputs: dict[str, str]) -> exp.Select:
    """Per key ``k`` (and experiment ``x`` when ``outputs`` names it) of the union of ``sources``: the columns
    of the earliest ``(t, id)`` (``v``, ``t``, ``id``) and the check range (``clo``, ``chi``) that ``outputs``
    names (source name -> output name)."""
    earliest = exp.Tuple(expressions=[_col("t"), _col("id")])
    aggregates = {
        "x": _col("x"),
        "k": _col("k"),
        "v": exp.ArgMin(this=_col("v"), expression=earliest),
        "t": exp.Min(this=_col("t")),
        "id": exp.ArgMin(this=_col("id"), expression=earliest.copy()),
        "clo": exp.Min(this=_col("clo")),
        "chi": exp.Max(this=_col("chi")),
    }
    return (
        exp.select(*(exp.alias_(aggregates[n], out) for n, out in outputs.items()), copy=False)
        .from_(_union_all(sources).subquery("e"), copy=False)
        .group_by(*(n for n in ("x", "k") if n in outputs), copy=False)
    )


def _first_exposure_source(
    relation: exp.Expr, columns: Sequence[str], names: Sequence[str], where: exp.Expr
) -> exp.Select:
    """``columns`` of ``relation`` named ``names`` (see ``_FIRST_NAMES``), where ``where`` holds."""
    return (
        exp.select(*(exp.alias_(_col(c), n) for c, n in zip(columns, names, strict=True)), copy=False)
        .from_(_from(relation), copy=False)
        .where(where.copy(), copy=False)
    )


def _outcome_columns(relations: Relations) -> tuple[str, ...]:
    if not relations.keyed:
        return _OUTCOME_COLUMNS
    return (*_OUTCOME_COLUMNS, relations.user_key, relations.user_check or "")


def _outcomes_of(
    relation: exp.Expr, alias: str, columns: Sequence[str], events: Sequence[str] | None
) -> exp.Select:
    select = exp.select(*(_col(c, alias) for c in columns), copy=False).from_(
        _from(relation, alias), copy=False
    )
    if events is not None:
        select = select.where(_col("metric", alias).isin(*(_lit(e) for e in events)), copy=False)
    return select


def _unique_relations(relations: Relations) -> list[exp.Expr]:
    """The relations whose outcomes are unique (the compacted base and the rolled parts)."""
    unique = [relations.outcomes_unique] if relations.outcomes_unique is not None else []
    return unique + [part.outcomes for part in relations.rollups]


def fresh_outcomes(relations: Relations, events: Sequence[str] | None = None) -> exp.Select | None:
    """``outcomes_raw`` with one row per event (key ``(event_id, user_id, metric)``; its time is the earliest
    of its copies', its value the smallest) and without the events already in a unique part (those win),
    optionally only those of ``events``; None when there are no raw outcomes."""
    if relations.outcomes_raw is None:
        return None
    columns = _outcome_columns(relations)
    keys = [_col(c) for c in columns if c not in ("ts", "value")]
    deduplicated = (
        exp.select(*keys, *(exp.alias_(exp.Min(this=_col(c)), c) for c in ("ts", "value")), copy=False)
        .from_(_outcomes_of(relations.outcomes_raw, "r", columns, events).subquery("raw"), copy=False)
        .group_by(*[k.copy() for k in keys], copy=False)
    )
    unique = _unique_relations(relations)
    if not unique:
        return deduplicated
    # Events in both, by the deduplication's key: found by a join whose build side is the (small) raw part, then
    # left out of it. With a hash key, the user's key and check stand for the user id.
    user = (relations.user_key, relations.user_check or "") if relations.keyed else ("user_id",)
    event = ("event_id", "metric", *user)
    known = _union_all([exp.select(*(_col(c, "u") for c in event)).from_(_from(r, "u")) for r in unique])
    same = _and(*(exp.EQ(this=_col(c, "k"), expression=_col(c, "d")) for c in event))
    again = (
        exp.select(*(_col(c, "d") for c in event), copy=False)
        .from_(deduplicated.copy().subquery("d"), copy=False)
        .join(known.subquery("k"), on=same, copy=False)
    )
    seen = exp.Tuple(expressions=[_col(c) for c in event]).isin(query=again.subquery())
    return (
        exp.select(*(_col(c) for c in columns), copy=False)
        .from_(deduplicated.subquery("f"), copy=False)
        .where(exp.not_(seen), copy=False)
    )


def unique_outcomes(relations: Relations, events: Sequence[str] | None = None) -> exp.Query:
    """Outcome rows without duplicate events, optionally only those of ``events`` (rolled parts included,
    read raw)."""
    columns = _outcome_columns(relations)
    parts: list[exp.Query] = [_outcomes_of(r, "u", columns, events) for r in _unique_relations(relations)]
    fresh = fresh_outcomes(relations, events)
    if fresh is not None:
        parts.append(fresh)
    if not parts:
        raise ValueError("Relations without outcomes")
    return _union_all(parts)


# ---------------------------------------------------------------- rollups (written by a store's compaction)


ROLLUP_HALVES = ("before", "after")
ROLLUP_STATS = ("n", "sum", "lo", "hi")
"""Per rolled-up outcome name ``i`` and half: ``{half}_{stat}{i}``, the event count, value sum, and earliest and
latest time of the user's events of that name in the bucket and half (NULL: none)."""


def rollup_column(half: str, stat: str, index: int) -> str:
    """The column of ``stat`` of the ``index``-th rolled-up outcome name in ``half`` (``before`` or ``after``)."""
    return f"{half}_{stat}{index}"


def exposure_rollup(
    exposures: exp.Expr, user_key: str = "user_key", user_check: str = "user_check"
) -> exp.Select:
    """Per experiment and user key of the raw ``exposures``: the first exposure (variant, ``first_ms`` and
    ``first_event_id``, the earliest ``(ts, event_id)``), ``last_ms``, and the user check's range."""
    earliest = exp.Tuple(expressions=[_col("ts"), _col("event_id")])
    return (
        exp.select(
            "experiment",
            exp.alias_(_col(user_key), "user_key"),
            exp.alias_(exp.ArgMin(this=_col("variant"), expression=earliest), "variant"),
            exp.alias_(exp.Min(this=_col("ts")), "first_ms"),
            exp.alias_(exp.ArgMin(this=_col("event_id"), expression=earliest.copy()), "first_event_id"),
            exp.alias_(exp.Max(this=_col("ts")), "last_ms"),
            exp.alias_(exp.Min(this=_col(user_check)), "check_lo"),
            exp.alias_(exp.Max(this=_col(user_check)), "check_hi"),
            copy=False,
        )
        .from_(_from(exposures), copy=False)
        .group_by(_col("experiment"), _col(user_key), copy=False)
    )


def outcome_rollup(
    outcomes: exp.Expr,
    splits: exp.Expr,
    metrics: Sequence[str],
    bucket_ms: int,
    user_key: str = "user_key",
    user_check: str = "user_check",
) -> exp.Select:
    """Per user key and time bucket (``ts // bucket_ms``) of the (unique) ``outcomes`` of ``metrics``: for each
    outcome name and half the count, value sum and time range of the user's events (``ROLLUP_STATS``), and the
    user check's range.

    A bucket's events are split in two halves at the user's earliest time in ``splits`` (a relation of
    ``user_key, ts``: the exposures), so that outcomes just before and after a first exposure fall in different
    halves. Queries use a half as a whole when all its events fall on the same side of every boundary they draw
    (first exposure, window end, cut points), which they check on its time range; otherwise they read the
    bucket's raw events. The split point is only a heuristic: no result depends on it.
    """
    split = (
        exp.select(
            exp.alias_(_col(user_key), "k"), exp.alias_(exp.Min(this=_col("ts")), "split_ms"), copy=False
        )
        .from_(_from(splits), copy=False)
        .group_by(_col(user_key), copy=False)
    )
    bucket = exp.IntDiv(this=_col("ts", "o"), expression=_lit(bucket_ms))
    after = _case(exp.GTE(this=_col("ts", "o"), expression=_col("split_ms", "s")), _lit(1), _lit(0))
    long = (
        exp.select(
            exp.alias_(_col(user_key, "o"), "user_key"),
            exp.alias_(bucket, "bucket"),
            exp.alias_(after, "after"),
            _col("metric", "o"),
            exp.alias_(exp.Count(this=exp.Star()), "n"),
            exp.alias_(exp.Sum(this=_col("value", "o")), "total"),
            exp.alias_(exp.Min(this=_col("ts", "o")), "lo"),
            exp.alias_(exp.Max(this=_col("ts", "o")), "hi"),
            exp.alias_(exp.Min(this=_col(user_check, "o")), "clo"),
            exp.alias_(exp.Max(this=_col(user_check, "o")), "chi"),
            copy=False,
        )
        .from_(_from(outcomes, "o"), copy=False)
        .join(split.subquery("s"), on=exp.EQ(this=_col("k", "s"), expression=_col(user_key, "o")),
              join_type="left", copy=False)
        .where(_col("metric", "o").isin(*(_lit(m) for m in metrics)), copy=False)
        .group_by(_col(user_key, "o"), bucket.copy(), after.copy(), _col("metric", "o"), copy=False)
    )  # fmt: skip
    columns: list[str | exp.Expr] = [
        "user_key",
        "bucket",
        exp.alias_(exp.Min(this=_col("clo")), "check_lo"),
        exp.alias_(exp.Max(this=_col("chi")), "check_hi"),
    ]
    aggregate = {"n": exp.Sum, "sum": exp.Sum, "lo": exp.Min, "hi": exp.Max}
    source = {"n": "n", "sum": "total", "lo": "lo", "hi": "hi"}
    for i, metric in enumerate(metrics):
        for h, half in enumerate(ROLLUP_HALVES):
            mine = _and(exp.EQ(this=_col("metric"), expression=_lit(metric)),
                        exp.EQ(this=_col("after"), expression=_lit(h)))  # fmt: skip
            for stat in ROLLUP_STATS:
                value = exp.case().when(mine.copy(), _col(source[stat]))
                columns.append(exp.alias_(aggregate[stat](this=value), rollup_column(half, stat, i)))
    return (
        exp.select(*columns, copy=False)
        .from_(long.subquery("l"), copy=False)
        .group_by(_col("user_key"), _col("bucket"), copy=False)
    )


# ---------------------------------------------------------------- metric kinds


@dataclass(frozen=True)
class Need:
    """A per-user measure of one outcome name: event ``count``, value ``sum`` (attributed), or ``pre`` sum."""

    event: str
    measure: Measure


@dataclass
class UserValues:
    """How a kind refers to one user's state at one cut: ``column(need)`` is the user's measure, ``cap(name)``
    the cut's quantile the kind asked for in ``caps``."""

    column: Callable[[Need], exp.Expr]
    cap: Callable[[str], exp.Expr | None]


@dataclass(frozen=True)
class Cap:
    """A quantile a metric clips a per-user value by: taken per cut over all users in it; ``side`` says whether
    it is the value's lower or upper limit, ``opposite`` the fixed limit on the other side, if any (a cap beyond
    it moves every user's value: to the upper limit, as numpy's clip does)."""

    value: exp.Expr
    quantile: float
    side: Literal["lower", "upper"]
    opposite: float | None = None


class MetricKind(abc.ABC):
    """How one kind of metric becomes SQL sums and back a ``TestStatistic``."""

    @abc.abstractmethod
    def needs(self, metric: MetricDefinition) -> list[Need]:
        """The per-user measures the metric reads."""

    def caps(self, metric: MetricDefinition, values: UserValues) -> dict[str, Cap]:
        """Quantiles the metric clips by (name -> ``Cap``); ``sums`` reads each as ``values.cap(name)``."""
        return {}

    @abc.abstractmethod
    def sums(self, metric: MetricDefinition, values: UserValues) -> dict[str, exp.Expr]:
        """Per-user expressions summed per variant and cut (name -> expression)."""

    @abc.abstractmethod
    def statistic(self, metric: MetricDefinition, n: int, sums: dict[str, float]) -> TestStatistic:
        """The variant's statistic from its user count and the sums named as in ``sums``."""


def _clip(value: exp.Expr, lower: exp.Expr | None, upper: exp.Expr | None) -> exp.Expr:
    """``value`` limited to [lower, upper] as ``numpy.clip`` does it (a lower bound above the upper one gives
    every value the upper one); a NULL (or NaN) bound does not clip, like numpy with no bound."""
    if lower is None and upper is None:
        return value
    value = exp.Cast(this=value, to=exp.DataType.build("double"))  # one type in every branch (ClickHouse)
    case = exp.case()
    if lower is not None and upper is not None:  # a quantile on one side may pass a fixed value on the other
        case = case.when(exp.GT(this=lower.copy(), expression=upper.copy()), upper.copy())
    if lower is not None:
        case = case.when(exp.LT(this=value.copy(), expression=lower), lower.copy())
    if upper is not None:
        case = case.when(exp.GT(this=value.copy(), expression=upper), upper.copy())
    return case.else_(value.copy())


class MeanKind(MetricKind):
    """binomial, count, mean/continuous: one value per user, optionally winsorised and CUPED-adjusted."""

    def _value_need(self, metric: MetricDefinition) -> Need:
        event = metric.event or ""
        if metric.type in ("binomial", "count") or metric.aggregation == "count":
            return Need(event, "count")
        return Need(event, "sum")

    def needs(self, metric: MetricDefinition) -> list[Need]:
        needs = [self._value_need(metric)]
        return needs + [Need(metric.event or "", "pre")] if metric.cuped else needs

    def _value(self, metric: MetricDefinition, values: UserValues) -> exp.Expr:
        value: exp.Expr = values.column(self._value_need(metric))
        if metric.type == "binomial":
            value = _case(exp.GT(this=value, expression=_lit(0)), _lit(1), _lit(0))
        return value

    def _pre(self, values: UserValues, metric: MetricDefinition) -> exp.Expr:
        """The pre-exposure value (only a CUPED metric has it among its ``needs``)."""
        return values.column(Need(metric.event or "", "pre"))

    def caps(self, metric: MetricDefinition, values: UserValues) -> dict[str, Cap]:
        w = metric.winsorize
        if w is None:
            return {}
        value = self._value(metric, values)
        out: dict[str, Cap] = {}
        sides: tuple[tuple[Literal["lower", "upper"], float | None], ...] = (
            ("lower", w.lower_quantile),
            ("upper", w.upper_quantile),
        )
        for side, quantile in sides:
            if quantile is not None:
                opposite = w.upper_value if side == "lower" else w.lower_value
                out[f"v{side}"] = Cap(value, quantile, side, opposite)
                if metric.cuped:
                    out[f"p{side}"] = Cap(self._pre(values, metric), quantile, side, opposite)
        return out

    def _bounds(
        self, metric: MetricDefinition, values: UserValues, prefix: str
    ) -> tuple[exp.Expr | None, exp.Expr | None]:
        w = metric.winsorize
        if w is None:
            return None, None
        lower = values.cap(f"{prefix}lower") if w.lower_quantile is not None else None
        upper = values.cap(f"{prefix}upper") if w.upper_quantile is not None else None
        if w.lower_value is not None:
            lower = _lit(float(w.lower_value))
        if w.upper_value is not None:
            upper = _lit(float(w.upper_value))
        return lower, upper

    def sums(self, metric: MetricDefinition, values: UserValues) -> dict[str, exp.Expr]:
        value = _clip(self._value(metric, values), *self._bounds(metric, values, "v"))
        out = {"v": value, "vv": exp.Mul(this=value.copy(), expression=value.copy())}
        if metric.cuped:
            pre = _clip(self._pre(values, metric), *self._bounds(metric, values, "p"))
            out |= {
                "p": pre,
                "pp": exp.Mul(this=pre.copy(), expression=pre.copy()),
                "vp": exp.Mul(this=value.copy(), expression=pre.copy()),
            }
        return out

    def statistic(self, metric: MetricDefinition, n: int, sums: dict[str, float]) -> TestStatistic:
        post = SampleMean(n, sums["v"], sums["vv"])
        if metric.cuped:
            return CupedMean(
                n=n, post=post, pre=SampleMean(n, sums["p"], sums["pp"]), post_pre_sum_product=sums["vp"]
            )
        if metric.type == "binomial":
            return Proportion(n, sums["v"])
        return post


class RatioKind(MetricKind):
    """ratio: per-user numerator and denominator (sums or counts of two outcome names), delta method."""

    def _needs(self, metric: MetricDefinition) -> tuple[Need, Need]:
        measure: Measure = "count" if metric.aggregation == "count" else "sum"
        return Need(metric.numerator or "", measure), Need(metric.denominator or "", measure)

    def needs(self, metric: MetricDefinition) -> list[Need]:
        return list(self._needs(metric))

    def sums(self, metric: MetricDefinition, values: UserValues) -> dict[str, exp.Expr]:
        num, den = (values.column(need) for need in self._needs(metric))
        return {
            "num": num,
            "num2": exp.Mul(this=num.copy(), expression=num.copy()),
            "den": den,
            "den2": exp.Mul(this=den.copy(), expression=den.copy()),
            "numden": exp.Mul(this=num.copy(), expression=den.copy()),
        }

    def statistic(self, metric: MetricDefinition, n: int, sums: dict[str, float]) -> TestStatistic:
        return Ratio(
            n=n,
            numerator=SampleMean(n, sums["num"], sums["num2"]),
            denominator=SampleMean(n, sums["den"], sums["den2"]),
            num_den_sum_product=sums["numden"],
        )


_KINDS: dict[str, MetricKind] = {}


def register_kind(metric_type: str, kind: MetricKind) -> None:
    """Compile metrics of ``metric_type`` with ``kind`` (the extension point for new metric kinds)."""
    _KINDS[metric_type] = kind


for _type in ("binomial", "count", "mean", "continuous"):
    register_kind(_type, MeanKind())
register_kind("ratio", RatioKind())


def kind_of(metric: MetricDefinition) -> MetricKind:
    try:
        return _KINDS[metric.type]
    except KeyError:
        raise ValueError(
            f"no SQL compiler for metric type {metric.type!r}; known: {sorted(_KINDS)}"
        ) from None


# ---------------------------------------------------------------- the report query


@dataclass(frozen=True)
class MeasureDef:
    """How one per-user measure is computed: ``event_value`` is the contribution of one raw event row (``o``:
    its relation's alias); ``rollup_stat`` the rolled-up statistic that sums those contributions (``n`` or ``sum``;
    None: the measure reads raw events only); ``attributed`` whether it counts when attributed (cumulated to each
    cut) or before the first exposure."""

    event_value: Callable[[str], exp.Expr]
    rollup_stat: Literal["n", "sum"] | None
    attributed: bool


MEASURES: dict[str, MeasureDef] = {
    "count": MeasureDef(lambda o: _lit(1), "n", True),
    "sum": MeasureDef(lambda o: _col("value", o), "sum", True),
    "pre": MeasureDef(lambda o: _col("value", o), "sum", False),
}


@dataclass
class _Layout:
    """The measures the query computes, in column order (``x0``, ``x1``, ...)."""

    needs: list[Need] = field(default_factory=list)

    def need_index(self, need: Need) -> int:
        if need not in self.needs:
            self.needs.append(need)
        return self.needs.index(need)

    def index(self, need: Need) -> int:
        """The column of a measure the layout already has (a kind reading one it did not declare is a bug)."""
        try:
            return self.needs.index(need)
        except ValueError:
            raise ValueError(f"{need} is read but not among the metrics' needs") from None


_NO_EVENT = -3  # the class of a row without events (an exposed user's LEFT JOIN row, an empty rolled-up half)


class _UserRows:
    """Builds the CTEs down to ``rows``: per exposed user, rows ``k, variant, j0, at, x0..., clash`` whose
    ``x<i>`` (measure ``layout.needs[i]``) add up to the user's measures; ``at`` is the cut at which a row's
    attributed measures start to count (pre-exposure measures count from ``j0``, the user's first cut). Every
    exposed user has at least one row.

    Rows come from the rolled-up halves that fall on one side of every boundary (first exposure, window end,
    cuts), and from raw events: those of the other halves (read back from their part by user key and bucket),
    those of outcome names a part does not roll up, and the raw, unrolled outcomes.
    """

    def __init__(
        self,
        relations: Relations,
        experiment_key: str,
        layout: _Layout,
        cuts: Sequence[int | None],
        window_ms: int | None,
        window: AnalysisWindow = ALL_TIME,
    ) -> None:
        self.relations = relations
        self.window = window
        self.experiment_key = experiment_key
        self.layout = layout
        self.cuts = cuts
        self.n_cuts = len(cuts)
        self.window_ms = window_ms
        self.events = sorted({need.event for need in layout.needs})
        rollable = {need.event for need in layout.needs if MEASURES[need.measure].rollup_stat is not None} - {
            need.event for need in layout.needs if MEASURES[need.measure].rollup_stat is None
        }
        # per rolled part: the outcome names read from its rollup (the rest of its events are read raw)
        self.rolled = [
            [e for e in self.events if e in rollable and e in part.metrics] for part in relations.rollups
        ]

    # -------------------------------------------------------- expressions

    def _classify(self, ts: exp.Expr) -> exp.Expr:
        """-1 before the first exposure, -2 after the attribution window or the analysis window's end, else
        the first cut at or after ``ts`` (or beyond); ``f.first_ms`` is the user's first exposure."""
        case = exp.case().when(exp.LT(this=ts.copy(), expression=_col("first_ms", "f")), _lit(-1))
        if self.window_ms is not None:
            case = case.when(self._after_attribution(ts, int(self.window_ms)), _lit(-2))
        if self.window.end_ms is not None:
            case = case.when(exp.GTE(this=ts.copy(), expression=_lit(self.window.end_ms)), _lit(-2))
        bounded = _first_cut_at_or_after(ts, self.cuts)
        if isinstance(bounded, exp.Case):
            for when in bounded.args["ifs"]:
                case = case.when(when.this, when.args["true"])
            return case.else_(bounded.args["default"])
        return case.else_(bounded)

    @staticmethod
    def _after_attribution(ts: exp.Expr, window_ms: int) -> exp.Expr:
        """``ts >= first_ms + window_ms`` for ``ts >= first_ms``, never overflowing 64 bits (any producer
        stamps events; a first exposure near the largest time failed DuckDB's query, and wrapped in
        ClickHouse): ``ts > least(first_ms, MAX - window_ms + 1) + (window_ms - 1)``, whose sum is at most
        MAX; a larger ``first_ms`` ends its window beyond every time."""
        if window_ms <= 0:
            return exp.true()
        first = _least([_col("first_ms", "f"), _bigint(2**63 - window_ms)])
        return exp.GT(this=ts.copy(), expression=exp.Add(this=first, expression=_bigint(window_ms - 1)))

    def _counted(self, cls: exp.Expr) -> exp.Expr:
        return _and(exp.GTE(this=cls.copy(), expression=_lit(0)),
                    exp.LT(this=cls.copy(), expression=_lit(self.n_cuts)))  # fmt: skip

    def _counts(self, need: Need, cls: exp.Expr) -> exp.Expr:
        """Whether an event (or half) of class ``cls`` counts in ``need``."""
        if MEASURES[need.measure].attributed:
            return self._counted(cls)
        return exp.EQ(this=cls.copy(), expression=_lit(-1))

    # -------------------------------------------------------- CTEs

    def first_exposures(self) -> exp.Select:
        """``fe``: the exposed users in the analysis window with ``j0``, their first cut (users first exposed
        after every cut left out)."""
        j0 = _first_cut_at_or_after(_col("first_ms"), self.cuts)
        checks = ("check_lo", "check_hi") if self.relations.keyed else ()
        select = exp.select("k", "variant", "first_ms", exp.alias_(j0, "j0"), *checks, copy=False).from_(
            first_exposure(self.relations, self.experiment_key).subquery("e"), copy=False
        )
        conditions = _in_window(_col("first_ms"), self.window)
        if all(c is not None for c in self.cuts):
            conditions.append(exp.LTE(this=_col("first_ms"), expression=_lit(self.cuts[-1])))
        return select.where(_and(*conditions), copy=False) if conditions else select

    def _rolled(self) -> exp.Query:
        """``rolled``: per rolled part and row (user key, bucket), each half's time range over the outcome names
        the query reads from it, and their counts and sums (``b<stat><e>``, ``a<stat><e>`` for event ``e``)."""
        selects = []
        for p, (part, names) in enumerate(zip(self.relations.rollups, self.rolled, strict=True)):
            if not names:
                continue
            index = {name: part.metrics.index(name) for name in names}
            columns: list[exp.Expr] = [
                exp.alias_(_lit(p), "part"), exp.alias_(_col("user_key"), "k"), exp.alias_(_col("bucket"), "b")
            ]  # fmt: skip
            for half in ROLLUP_HALVES:  # NULL: no event in the half
                lows = [_col(rollup_column(half, "lo", i)) for i in index.values()]
                highs = [_col(rollup_column(half, "hi", i)) for i in index.values()]
                some = _any_set(c.copy() for c in lows)
                lo = _least([exp.Coalesce(this=c, expressions=[_bigint(_TS_MAX)]) for c in lows])
                hi = _greatest([exp.Coalesce(this=c, expressions=[_bigint(_TS_MIN)]) for c in highs])
                columns += [exp.alias_(_case(some.copy(), lo, None), f"{half[0]}lo"),
                            exp.alias_(_case(some, hi, None), f"{half[0]}hi")]  # fmt: skip
            columns += [exp.alias_(_col("check_lo"), "clo"), exp.alias_(_col("check_hi"), "chi")]
            for e, event in enumerate(self.events):
                for half in ROLLUP_HALVES:
                    for stat in ("n", "sum"):
                        value: exp.Expr = _lit(0)
                        if event in index:
                            value = exp.Coalesce(this=_col(rollup_column(half, stat, index[event])),
                                                 expressions=[_lit(0)])  # fmt: skip
                        columns.append(exp.alias_(value, f"{half[0]}{stat}{e}"))
            counts = (_col(rollup_column(half, "n", i)) for i in index.values() for half in ROLLUP_HALVES)
            present = _any_set(counts)
            selects.append(
                exp.select(*columns, copy=False)
                .from_(_from(part.outcome_rollup), copy=False)
                .where(present, copy=False)
            )
        return _union_all(selects)

    def _classified(self, rolled: exp.Expr) -> exp.Select:
        """``classified``: every exposed user joined to its rolled-up rows, with each row's contribution and
        whether it is ``clean`` (each half on one side of every boundary, and not counted at two cuts)."""
        inner: list[exp.Expr] = [
            _col("k", "f"), _col("variant", "f"), _col("j0", "f"), _col("part", "r"), _col("b", "r")
        ]  # fmt: skip
        for half in "ba":
            lo, hi = _col(f"{half}lo", "r"), _col(f"{half}hi", "r")
            empty = exp.Is(this=lo.copy(), expression=exp.Null())
            inner += [
                exp.alias_(_case(empty.copy(), _lit(_NO_EVENT), self._classify(lo)), f"c{half}"),
                exp.alias_(_case(empty, _lit(_NO_EVENT), self._classify(hi)), f"c{half}_hi"),
            ]
        for e in range(len(self.events)):
            inner += [_col(f"{h}{stat}{e}", "r") for h in "ba" for stat in ("n", "sum")]
        clash = _or(
            exp.NEQ(this=_col("check_lo", "f"), expression=_col("check_hi", "f")),
            exp.NEQ(this=_col("clo", "r"), expression=_col("check_lo", "f")),
            exp.NEQ(this=_col("chi", "r"), expression=_col("check_lo", "f")),
        )
        inner.append(exp.alias_(_case(clash, _lit(1), _lit(0)), "clash"))
        joined = (
            exp.select(*inner, copy=False)
            .from_(_from(exp.to_table("fe"), "f"), copy=False)
            .join(_from(rolled, "r"), on=exp.EQ(this=_col("k", "r"), expression=_col("k", "f")),
                  join_type="left", copy=False)
        )  # fmt: skip
        cb, ca = _col("cb"), _col("ca")
        clean = _and(
            exp.EQ(this=cb.copy(), expression=_col("cb_hi")),
            exp.EQ(this=ca.copy(), expression=_col("ca_hi")),
            exp.not_(
                _and(self._counted(cb), self._counted(ca), exp.NEQ(this=cb.copy(), expression=ca.copy()))
            ),
        )
        at = (
            exp.case().when(self._counted(cb), cb.copy()).when(self._counted(ca), ca.copy()).else_(_col("j0"))
        )
        columns: list[str | exp.Expr] = [
            "k", "variant", "j0", "part", "b",
            exp.alias_(_case(clean, _lit(1), _lit(0)), "clean"), exp.alias_(at, "at"),
        ]  # fmt: skip
        for i, need in enumerate(self.layout.needs):
            e, stat = self.events.index(need.event), MEASURES[need.measure].rollup_stat or "n"
            value = exp.Add(
                this=_case(self._counts(need, cb), _col(f"b{stat}{e}"), _lit(0)),
                expression=_case(self._counts(need, ca), _col(f"a{stat}{e}"), _lit(0)),
            )
            columns.append(exp.alias_(value, f"x{i}"))
        columns.append("clash")
        return exp.select(*columns, copy=False).from_(joined.subquery("c"), copy=False)

    def _raw_events(self) -> exp.Query | None:
        """The raw events the query classifies one by one (columns: key, check, metric, ts, value)."""
        relations = self.relations
        key, check = relations.user_key, relations.user_check
        columns = [key, *([check] if check else []), "metric", "ts", "value"]
        parts: list[exp.Query] = []
        if relations.outcomes_unique is not None:
            parts.append(_outcomes_of(relations.outcomes_unique, "u", columns, self.events))
        fresh = fresh_outcomes(relations, self.events)
        if fresh is not None:
            parts.append(exp.select(*columns).from_(fresh.subquery("t")))
        for p, (part, names) in enumerate(zip(relations.rollups, self.rolled, strict=True)):
            unrolled = [e for e in self.events if e not in names]
            if unrolled:
                parts.append(_outcomes_of(part.outcomes, "u", columns, unrolled))
            if names:  # the raw events of the rows that are not clean
                bucket = exp.IntDiv(this=_col("ts"), expression=_lit(part.bucket_ms))
                raw = exp.select(*columns, exp.alias_(bucket, "b")).from_(
                    _outcomes_of(part.outcomes, "u", columns, names).subquery("o")
                )
                unclean = (
                    exp.select("k", "b").from_("classified")
                    .where(_and(exp.EQ(this=_col("part"), expression=_lit(p)),
                                exp.EQ(this=_col("clean"), expression=_lit(0))))
                )  # fmt: skip
                on = _and(exp.EQ(this=_col(key, "o"), expression=_col("k", "x")),
                          exp.EQ(this=_col("b", "o"), expression=_col("b", "x")))  # fmt: skip
                parts.append(
                    exp.select(*(_col(c, "o") for c in columns))
                    .from_(raw.subquery("o"))
                    .join(unclean.subquery("x"), on=on)
                )
        return _union_all(parts) if parts else None

    def _event_rows(self, events: exp.Expr, presence: bool) -> exp.Select:
        """Rows of raw ``events`` joined to the exposed users (LEFT JOIN with ``presence``: every user a row)."""
        relations = self.relations
        ts = _col("ts", "o")
        b = _case(exp.Is(this=ts.copy(), expression=exp.Null()), _lit(_NO_EVENT), self._classify(ts))
        inner = [_col("k", "f"), _col("variant", "f"), _col("j0", "f"), _col("metric", "o"), _col("value", "o"),
                 exp.alias_(b, "b")]  # fmt: skip
        if relations.keyed:
            check = relations.user_check or ""
            clash: exp.Expr = exp.NEQ(this=_col(check, "o"), expression=_col("check_lo", "f"))
            if presence:
                clash = _or(clash, exp.NEQ(this=_col("check_lo", "f"), expression=_col("check_hi", "f")))
            inner.append(exp.alias_(_case(clash, _lit(1), _lit(0)), "clash"))
        else:
            inner.append(exp.alias_(_lit(0), "clash"))
        joined = (
            exp.select(*inner, copy=False)
            .from_(_from(exp.to_table("fe"), "f"), copy=False)
            .join(_from(events, "o"), on=exp.EQ(this=_col(relations.user_key, "o"), expression=_col("k", "f")),
                  join_type="left" if presence else None, copy=False)
        )  # fmt: skip
        columns: list[str | exp.Expr] = [
            "k", "variant", "j0",
            exp.alias_(_case(self._counted(_col("b")), _col("b"), _col("j0")), "at"),
        ]  # fmt: skip
        for i, need in enumerate(self.layout.needs):
            counts = _and(
                exp.EQ(this=_col("metric"), expression=_lit(need.event)), self._counts(need, _col("b"))
            )
            columns.append(
                exp.alias_(_case(counts, MEASURES[need.measure].event_value("d"), _lit(0)), f"x{i}")
            )
        columns.append("clash")
        return exp.select(*columns, copy=False).from_(joined.subquery("d"), copy=False)

    def ctes(self, by_cut: bool) -> list[tuple[str, exp.Expr]]:
        """The CTEs, the last one ``rows``; with ``by_cut`` the raw events' rows are summed per user and cut
        first (rolled-up rows are few already)."""
        ctes: list[tuple[str, exp.Expr]] = [("fe", self.first_exposures())]
        has_rolled = any(self.rolled)
        if has_rolled:
            ctes.append(("classified", self._classified(self._rolled())))
        events = self._raw_events()
        rows: list[exp.Query] = []
        if has_rolled:
            measures = [f"x{i}" for i in range(len(self.layout.needs))]
            rows.append(
                exp.select("k", "variant", "j0", "at", *measures, "clash")
                .from_("classified")
                .where(exp.EQ(this=_col("clean"), expression=_lit(1)))
            )
        if events is None and not rows:  # no outcomes at all: one row per user, with nothing
            events = _empty_events(self.relations)
        if events is not None:
            event_rows = self._event_rows(events, presence=not has_rolled)
            rows.append(_per_user_and_cut(event_rows, len(self.layout.needs)) if by_cut else event_rows)
        ctes.append(("rows", _union_all(rows)))
        return ctes


def _per_user_and_cut(rows: exp.Query, n_measures: int) -> exp.Select:
    """``rows`` summed per user and cut (``k, at``)."""
    return (
        exp.select("k", exp.alias_(exp.AnyValue(this=_col("variant")), "variant"),
                   exp.alias_(exp.AnyValue(this=_col("j0")), "j0"), "at",
                   *(exp.alias_(exp.Sum(this=_col(f"x{i}")), f"x{i}") for i in range(n_measures)),
                   exp.alias_(exp.Max(this=_col("clash")), "clash"), copy=False)
        .from_(rows.subquery("r"), copy=False)
        .group_by("k", "at", copy=False)
    )  # fmt: skip


def _empty_events(relations: Relations) -> exp.Select:
    columns = [relations.user_key, *([relations.user_check] if relations.user_check else []), "metric", "ts"]
    return exp.select(
        *(exp.alias_(exp.Null(), c) for c in columns),
        exp.alias_(exp.Cast(this=exp.Null(), to=exp.DataType.build("double")), "value"),
    ).where(exp.false())


def _cuts_query(ctes: list[tuple[str, exp.Expr]], layout: _Layout, metrics: Sequence[MetricDefinition],
                n_cuts: int, duckdb: bool) -> exp.Query:  # fmt: skip
    """The final query after ``rows``: per variant and cut, the users and each metric's sums.

    Output rows ``kind, variant, j, n, key_clashes, m<metric>_<sum>...``: ``kind`` 0 rows hold changes that count
    from cut ``j`` on (a variant's value at cut ``j`` adds up its kind-0 rows up to ``j``), ``kind`` 1 rows hold
    what counts at cut ``j`` only. ``CompiledReport.decode`` adds them up.

    One cut: per user one state, summed per variant. Several cuts: ``state`` holds per user one row per cut at
    which the user's measures change; a window over each user's few rows cumulates them (``cum``), and per variant
    and cut each row adds the change it makes to every summed expression (``moves``) and each user its start
    (``entries``), so no row is repeated per cut. Quantile caps differ per cut: the caps are taken over every
    user's state at every cut (``spans``), and users whose value is clipped at some cut (``tail``) are summed cut
    by cut with their clipped values instead (``tail_spans``), which keeps the sums exact.
    """
    measures = [f"x{i}" for i in range(len(layout.needs))]
    clipped = [
        (m, name, cap.side)
        for m, metric in enumerate(metrics)
        for name, cap in kind_of(metric).caps(metric, _values(layout, lambda i: _lit(0))).items()
    ]

    def sums(column: Callable[[int], exp.Expr], cap: Callable[[int, str], exp.Expr | None]
             ) -> dict[str, exp.Expr]:  # fmt: skip
        out: dict[str, exp.Expr] = {}
        for m, metric in enumerate(metrics):
            values = _values(layout, column, partial(cap, m))
            out |= {f"m{m}_{s}": e for s, e in kind_of(metric).sums(metric, values).items()}
        return out

    def cap_values(column: Callable[[int], exp.Expr]) -> dict[str, Cap]:
        return {
            f"cap_m{m}_{name}": cap
            for m, metric in enumerate(metrics)
            for name, cap in kind_of(metric).caps(metric, _values(layout, column)).items()
        }

    def cap_column(table: str) -> Callable[[int, str], exp.Expr]:
        return lambda m, name: _col(f"cap_m{m}_{name}", table)

    def unclipped(m: int, name: str) -> None:
        return None

    def header(kind: int, n: exp.Expr, clashes: exp.Expr, j: exp.Expr) -> list[exp.Expr]:
        return [exp.alias_(_lit(kind), "kind"), _col("variant"), exp.alias_(j, "j"), exp.alias_(n, "n"),
                exp.alias_(clashes, "key_clashes")]  # fmt: skip

    def quantiles(source: str, group: list[exp.Expr]) -> exp.Select:
        columns = [
            exp.alias_(ExactQuantile(this=exp.Cast(this=c.value, to=exp.DataType.build("double")),
                                     quantile=_lit(float(c.quantile))), name)
            for name, c in cap_values(lambda i: _col(f"x{i}")).items()
        ]  # fmt: skip
        return exp.select(*group, *columns, copy=False).from_(source, copy=False)

    if n_cuts == 1:
        user_cut = (
            exp.select("k", exp.alias_(exp.AnyValue(this=_col("variant")), "variant"),
                       *(exp.alias_(exp.Sum(this=_col(x)), x) for x in measures),
                       exp.alias_(exp.Max(this=_col("clash")), "clash"), copy=False)
            .from_("rows", copy=False)
            .group_by("k", copy=False)
        )  # fmt: skip
        ctes.append(("user_cut", user_cut))
        named = sums(lambda i: _col(f"x{i}"), cap_column("caps") if clipped else unclipped)
        final = exp.select(
            *header(0, exp.Count(this=exp.Star()), exp.Sum(this=_col("clash")), _lit(0)),
            *(exp.alias_(exp.Sum(this=e), name) for name, e in named.items()),
            copy=False,
        ).from_("user_cut", copy=False)
        if clipped:
            ctes.append(("caps", quantiles("user_cut", [])))
            final = final.join("caps", join_type="cross", copy=False)
        return _with(
            final.group_by(_col("variant"), copy=False), ctes, duckdb, materialize={"user_cut", "classified"}
        )

    k, at = [_col("k")], _col("at")
    cum_columns: list[str | exp.Expr] = [
        "k", "variant", "j0", "at", "clash",
        exp.alias_(_over(exp.RowNumber(), k, at), "rn"),
        exp.alias_(_over(exp.Lead(this=at.copy(), offset=_lit(1), default=_lit(n_cuts)), k, at), "until"),
    ]  # fmt: skip
    for i, need in enumerate(layout.needs):
        if MEASURES[need.measure].attributed:
            cum_columns += [exp.alias_(_over(exp.Sum(this=_col(f"x{i}")), k, at, running=True), f"c{i}"),
                            exp.alias_(_col(f"x{i}"), f"d{i}")]  # fmt: skip
        else:
            cum_columns.append(exp.alias_(_over(exp.Sum(this=_col(f"x{i}")), k), f"c{i}"))
    # a user's rows at one cut need not be summed first: the running sums and changes telescope over them
    ctes.append(("cum", exp.select(*cum_columns, copy=False).from_("rows", copy=False)))

    def now(i: int) -> exp.Expr:
        return _col(f"c{i}")

    def before(i: int) -> exp.Expr:
        if MEASURES[layout.needs[i].measure].attributed:
            return exp.Paren(this=exp.Sub(this=_col(f"c{i}"), expression=_col(f"d{i}")))
        return _col(f"c{i}")

    def start(i: int) -> exp.Expr:
        return _lit(0) if MEASURES[layout.needs[i].measure].attributed else _col(f"c{i}")

    first = exp.EQ(this=_col("rn"), expression=_lit(1))
    body = "cum"
    if clipped:
        # every user's state at every cut: from its rows, and from its start before its first row
        def spans(where: exp.Expr | None) -> exp.Query:
            out = []
            for lo, hi, value, only_first in (("at", "until", now, False), ("j0", "at", start, True)):
                j = exp.Explode(this=exp.Anonymous(this="range", expressions=[_col(lo), _col(hi)]))
                select = exp.select(
                    "k",
                    "variant",
                    exp.alias_(j, "j"),
                    *(exp.alias_(value(i), f"x{i}") for i in range(len(measures))),
                    "clash",
                )
                conditions = [c for c in (where, first if only_first else None) if c is not None]
                out.append(
                    select.from_("cum").where(_and(*conditions)) if conditions else select.from_("cum")
                )
            return _union_all(out)

        caps = cap_values(lambda i: _col(f"x{i}"))
        bounds = exp.select(*(
            exp.alias_((exp.Max if cap.side == "lower" else exp.Min)(this=_col(name)), name)
            for name, cap in caps.items()
        )).from_("caps")  # fmt: skip

        def beyond(value: Callable[[int], exp.Expr]) -> exp.Expr:
            """Whether a user's value is clipped by a cap at some cut (every user's is where a cap passes the
            fixed limit on its other side)."""
            out: list[exp.Expr] = []
            for name, cap in cap_values(value).items():
                v = exp.Cast(this=cap.value, to=exp.DataType.build("double"))
                bound = _col(name, "bounds")
                compare = exp.LT if cap.side == "lower" else exp.GT
                out.append(compare(this=v, expression=bound))
                if cap.opposite is not None:
                    out.append(compare(this=_lit(float(cap.opposite)), expression=bound.copy()))
            return _or(*out)

        tail = (
            exp.select("k").from_("cum").join("bounds", join_type="cross")
            .where(_or(beyond(now), _and(first.copy(), exp.GT(this=_col("at"), expression=_col("j0")),
                                         beyond(start))))
            .group_by("k")
        )  # fmt: skip
        in_tail = _col("k").isin(query=exp.select("k").from_("tail"))
        ctes += [("spans", spans(None)), ("caps", quantiles("spans", [_col("j")]).group_by("j")),
                 ("bounds", bounds), ("tail", tail), ("tail_spans", spans(in_tail.copy())),
                 ("body", exp.select("*").from_("cum").where(exp.not_(in_tail)))]  # fmt: skip
        body = "body"
    changes = sums(now, unclipped)
    previous = sums(before, unclipped)
    moves = (
        exp.select(
            *header(0, _lit(0), exp.Sum(this=_col("clash")), _col("at")),
            *(
                exp.alias_(
                    exp.Sum(this=exp.Sub(this=exp.Paren(this=e), expression=exp.Paren(this=previous[name]))),
                    name,
                )
                for name, e in changes.items()
            ),
        )
        .from_(body)
        .group_by("variant", "at")
    )
    entries = (
        exp.select(
            *header(0, exp.Count(this=exp.Star()), _lit(0), _col("j0")),
            *(exp.alias_(exp.Sum(this=e), name) for name, e in sums(start, unclipped).items()),
        )
        .from_(body)
        .where(first.copy())
        .group_by("variant", "j0")
    )
    parts: list[exp.Query] = [moves, entries]
    if clipped:
        named = sums(lambda i: _col(f"x{i}", "s"), cap_column("caps"))
        parts.append(
            exp.select(
                exp.alias_(_lit(1), "kind"), _col("variant", "s"), _col("j", "s"),
                exp.alias_(exp.Count(this=exp.Star()), "n"), exp.alias_(exp.Sum(this=_col("clash", "s")), "key_clashes"),
                *(exp.alias_(exp.Sum(this=e), name) for name, e in named.items()),
            )
            .from_(_from(exp.to_table("tail_spans"), "s"))
            .join("caps", on=exp.EQ(this=_col("j", "caps"), expression=_col("j", "s")))
            .group_by(_col("variant", "s"), _col("j", "s"))
        )  # fmt: skip
    return _with(_union_all(parts), ctes, duckdb, materialize={"cum", "classified"})


def _values(layout: _Layout, column: Callable[[int], exp.Expr],
            cap: Callable[[str], exp.Expr | None] = lambda name: None) -> UserValues:  # fmt: skip
    return UserValues(column=lambda need: column(layout.index(need)), cap=cap)


def _with(query: exp.Query, ctes: Sequence[tuple[str, exp.Expr]], duckdb: bool,
          materialize: set[str]) -> exp.Query:  # fmt: skip
    """``query`` with ``ctes``; in DuckDB those in ``materialize`` are computed once however often they are read."""
    for name, cte in ctes:
        query = query.with_(name, as_=cte, materialized=True if duckdb and name in materialize else None,
                            copy=False)  # fmt: skip
    return query


@dataclass(frozen=True)
class CompiledReport:
    """A compiled report query and what its result columns mean."""

    sql: str
    metrics: tuple[MetricDefinition, ...]
    cuts: tuple[int | None, ...]
    sums: tuple[tuple[str, ...], ...]  # per metric, its sum names

    def decode(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> list[list[dict[str, TestStatistic]]]:
        """``[cut][metric]`` -> variant -> statistic, from the query's result rows (see ``_cuts_query``)."""
        index = {name: i for i, name in enumerate(columns)}
        if any(row[index["key_clashes"]] for row in rows):
            raise KeyClash("two user ids share a hash key")
        names = [f"m{m}_{s}" for m, sums in enumerate(self.sums) for s in sums]
        width = 1 + len(names)
        n_cuts = len(self.cuts)
        added: dict[str, list[list[list[Any]]]] = {}  # variant -> kind -> cut -> [n, sums...]
        for row in rows:
            per_kind = added.setdefault(
                row[index["variant"]], [[[0] * width for _ in range(n_cuts)] for _ in "01"]
            )
            target = per_kind[int(row[index["kind"]])][int(row[index["j"]])]
            target[0] += int(row[index["n"]])
            for s, name in enumerate(names, start=1):
                target[s] += row[index[name]] or 0
        out: list[list[dict[str, TestStatistic]]] = [[{} for _ in self.metrics] for _ in self.cuts]
        for variant, (changes, at_cut) in sorted(added.items()):
            running = [0] * width
            for j in range(n_cuts):
                running = [a + b for a, b in zip(running, changes[j], strict=True)]
                total = [a + b for a, b in zip(running, at_cut[j], strict=True)]
                n = int(total[0])
                if n == 0:  # no users of this variant at this cut yet
                    continue
                named = dict(zip(names, total[1:], strict=True))
                for m, metric in enumerate(self.metrics):
                    sums = {s: float(named[f"m{m}_{s}"]) for s in self.sums[m]}
                    out[j][m][variant] = kind_of(metric).statistic(metric, n, sums)
        return out


def compile_report(
    relations: Relations,
    experiment_key: str,
    metrics: Sequence[MetricDefinition],
    cuts: Sequence[int | None],
    window_ms: int | None,
    dialect: str,
    window: AnalysisWindow = ALL_TIME,
) -> CompiledReport:
    """One query for ``metrics`` of ``experiment_key`` at every cut (ascending; the last may be None = all),
    over the users and outcomes of the analysis ``window``.

    Variants without users at a cut are left out of that cut, as in the row path.
    """
    if not cuts:
        raise ValueError("at least one cut point (None = everything)")
    bounded = [c for c in cuts if c is not None]
    if bounded != sorted(bounded) or None in cuts[:-1]:
        raise ValueError(f"cuts must ascend, with None only last: {list(cuts)}")
    layout = _Layout()
    for metric in metrics:
        for need in kind_of(metric).needs(metric):
            layout.need_index(need)
    ctes = _UserRows(relations, experiment_key, layout, cuts, window_ms, window).ctes(by_cut=len(cuts) > 1)
    query = _cuts_query(ctes, layout, metrics, len(cuts), dialect == "duckdb")
    sums = tuple(tuple(kind_of(m).sums(m, _values(layout, lambda i: _lit(0)))) for m in metrics)
    return CompiledReport(
        sql=query.sql(dialect=DIALECTS[dialect]), metrics=tuple(metrics), cuts=tuple(cuts), sums=sums
    )


def compile_user_rows(
    relations: Relations,
    experiment_key: str,
    event: str,
    until_ms: int | None,
    window_ms: int | None,
    dialect: str,
    window: AnalysisWindow = ALL_TIME,
) -> str:
    """Per exposed user in the analysis ``window``, ordered by user id: ``variant, value_sum, event_count,
    pre_sum`` of ``event``.

    The SQL twin of ``EventStore.user_metric_values`` (for inspection and tests; reports use ``compile_report``).
    """
    layout = _Layout([Need(event, "sum"), Need(event, "count"), Need(event, "pre")])
    ctes = _UserRows(relations.by_user_id(), experiment_key, layout, [until_ms], window_ms, window).ctes(
        by_cut=False
    )
    select = (
        exp.select(
            _col("variant"),
            exp.alias_(exp.Sum(this=_col("x0")), "value_sum"),
            exp.alias_(exp.Sum(this=_col("x1")), "event_count"),
            exp.alias_(exp.Sum(this=_col("x2")), "pre_sum"),
            copy=False,
        )
        .from_("rows", copy=False)
        .group_by("k", "variant", copy=False)
        .order_by("k", copy=False)
    )
    return _with(select, ctes, dialect == "duckdb", materialize=set()).sql(dialect=DIALECTS[dialect])


# ---------------------------------------------------------------- small queries


def _render(select: exp.Expr, dialect: str) -> str:
    return select.sql(dialect=DIALECTS[dialect])


def experiments_query(relations: Relations, dialect: str) -> str:
    """Experiment keys with at least one exposure, sorted."""
    select = (
        exp.select(_col("experiment"), copy=False)
        .from_(_from(relations.by_user_id().exposures or _empty_exposures()), copy=False)
        .group_by(_col("experiment"), copy=False)
        .order_by(_col("experiment"), copy=False)
    )
    return _render(select, dialect)


def _no_rows(columns: Sequence[str]) -> exp.Select:
    """A relation with ``columns`` (all NULL) and no rows."""
    return exp.select(*(exp.alias_(exp.Null(), c) for c in columns)).where(exp.false())


def _empty_exposures() -> exp.Select:
    return _no_rows(_EXPOSURE_COLUMNS)


def _per_first_exposure(
    relations: Relations, experiment_key: str | None, group: Sequence[exp.Expr], window: AnalysisWindow
) -> exp.Select:
    """Exposed users (first exposed in ``window``) per ``group`` of their first exposure, with ``key_clashes``
    (users whose key stands for two user ids: then ask again ``by_user_id``); of every experiment when
    ``experiment_key`` is None (``group`` may name ``experiment``)."""
    columns = [exp.alias_(exp.Count(this=exp.Star()), "users")]
    if relations.keyed:
        clash = exp.NEQ(this=_col("check_lo"), expression=_col("check_hi"))
        columns.append(exp.alias_(exp.Sum(this=_case(clash, _lit(1), _lit(0))), "key_clashes"))
    else:
        columns.append(exp.alias_(_lit(0), "key_clashes"))
    select = exp.select(*group, *columns, copy=False).from_(
        first_exposure(relations, experiment_key).subquery("f"), copy=False
    )
    conditions = _in_window(_col("first_ms"), window)
    if conditions:
        select = select.where(_and(*conditions), copy=False)
    return select.group_by(*(g.copy() for g in group), copy=False).order_by(
        *(g.copy() for g in group), copy=False
    )


def variant_counts_query(
    relations: Relations, experiment_key: str, dialect: str, window: AnalysisWindow = ALL_TIME
) -> str:
    """Users per variant (of their first exposure): ``variant, users, key_clashes``."""
    return _render(_per_first_exposure(relations, experiment_key, [_col("variant")], window), dialect)


def experiment_variant_counts_query(relations: Relations, dialect: str) -> str:
    """Users per variant of every experiment (of their first exposure, all time): ``experiment, variant,
    users, key_clashes``, sorted as ``experiments_query`` and ``variant_counts_query`` sort."""
    group = [_col("experiment"), _col("variant")]
    return _render(_per_first_exposure(relations, None, group, ALL_TIME), dialect)


def exposure_timeline_query(
    relations: Relations, experiment_key: str, bucket_ms: int, dialect: str, window: AnalysisWindow = ALL_TIME
) -> str:
    """Newly exposed users per bucket of ``bucket_ms`` and variant: ``bucket, variant, users, key_clashes``.

    ``bucket`` is ``first_ms // bucket_ms`` rounded down, as Python's ``//`` (SQL's rounds towards zero, which
    put a time before 1970 in the next bucket); its start, ``bucket * bucket_ms``, may lie below the 64-bit
    range, so the caller multiplies."""
    first_ms = _col("first_ms")
    below = exp.LT(this=exp.Mod(this=first_ms.copy(), expression=_lit(bucket_ms)), expression=_lit(0))
    bucket = exp.Sub(
        this=exp.IntDiv(this=first_ms, expression=_lit(bucket_ms)), expression=_case(below, _lit(1), _lit(0))
    )
    return _render(_per_first_exposure(relations, experiment_key, [bucket, _col("variant")], window), dialect)


def time_range_query(
    relations: Relations, experiment_key: str, dialect: str, window: AnalysisWindow = ALL_TIME
) -> str:
    """Earliest and latest exposure time of the experiment; in a bounded ``window``, of its users' exposures
    (their first at or after the start), the latest cut to just before the end (where the analysis stops)."""
    exposures = (
        exp.select(copy=False)
        .from_(_from(relations.by_user_id().exposures or _empty_exposures()), copy=False)
        .where(exp.EQ(this=_col("experiment"), expression=_lit(experiment_key)), copy=False)
    )
    lo, hi = exp.Min(this=_col("ts")), exp.Max(this=_col("ts"))
    if not window.bounded:
        return _render(exposures.select(exp.alias_(lo, "lo"), exp.alias_(hi, "hi"), copy=False), dialect)
    per_user = exposures.select(
        "user_id", exp.alias_(lo, "first_ms"), exp.alias_(hi, "last_ms"), copy=False
    ).group_by("user_id", copy=False)
    per_user = per_user.having(_and(*_in_window(exp.Min(this=_col("ts")), window)), copy=False)
    latest: exp.Expr = exp.Max(this=_col("last_ms"))
    if window.end_ms is not None:
        latest = _least([latest, _lit(window.end_ms - 1)])
    select = exp.select(
        exp.alias_(exp.Min(this=_col("first_ms")), "lo"), exp.alias_(latest, "hi"), copy=False
    ).from_(per_user.subquery("u"), copy=False)
    return _render(select, dialect)


def metrics_query(relations: Relations, dialect: str) -> str:
    """Outcome names, sorted."""
    select = (
        exp.select(_col("metric"), copy=False)
        .from_(unique_outcomes(relations.by_user_id()).subquery("o"), copy=False)
        .group_by(_col("metric"), copy=False)
        .order_by(_col("metric"), copy=False)
    )
    return _render(select, dialect)


def counts_query(relations: Relations, dialect: str) -> str:
    """Exposed (experiment, user) pairs and distinct outcome events."""
    raw = relations.by_user_id()
    pairs = (
        exp.select(_col("experiment"), _col("user_id"), copy=False)
        .from_(_from(raw.exposures or _empty_exposures()), copy=False)
        .group_by(_col("experiment"), _col("user_id"), copy=False)
    )
    exposed = exp.select(exp.Count(this=exp.Star()), copy=False).from_(pairs.subquery("p"), copy=False)
    outcomes = exp.select(exp.Count(this=exp.Star()), copy=False).from_(
        unique_outcomes(raw).subquery("o"), copy=False
    )
    select = exp.select(
        exp.alias_(exposed.subquery(), "exposed_users"),
        exp.alias_(outcomes.subquery(), "outcomes"),
        copy=False,
    )
    return _render(select, dialect)
