"""Metric definitions compiled to SQL: one query per experiment for every metric and every timeline cut point.

The analysis runs where the events are. A query built here reads the raw, append-only event tables

- ``exposures(event_id, experiment, variant, user_id, ts)``
- ``outcomes(event_id, user_id, metric, ts, value)``

and returns one row per variant holding the sufficient statistics of every metric at every cut point; Python only
turns those sums into ``TestStatistic`` objects for ``analyse_metrics`` / ``compare_to_control``. The semantics
are those of ``MemoryEventStore``'s row path, which is the reference the tests compare against:

- a user's first exposure is the earliest ``(ts, event_id)``; its variant is the user's variant;
- outcomes are deduplicated by event id (``(event_id, user_id, metric, ts)``; a copy with another value keeps
  the smaller one), then attributed to the user when ``first_ms <= ts < first_ms + window``; outcomes before the
  first exposure are the pre-exposure covariate (CUPED);
- at a cut point ``c`` only users with ``first_ms <= c`` and outcomes with ``ts <= c`` count.

The query is built with sqlglot expressions (never by pasting strings) and rendered per engine by a dialect
(``DIALECTS``: DuckDB and ClickHouse). Its stages, each a CTE with every column aliased:

1. ``first_exposure``: per user key, variant and first exposure time;
2. ``events``: the deduplicated outcomes of the metrics' events (``Relations`` says what needs deduplicating);
3. ``attributed``: each event of an exposed user tagged with the first cut it counts at (or as pre-exposure, or
   not attributed) and its contribution to each measure the metrics need, plus one entry row per user;
4. ``state``: per user, one row per cut at which its measures change (the entry row holds the pre-exposure sums);
5. ``cum`` and ``user_cut`` (several cuts): a window over each user's few rows cumulates them and each is spread
   over the cuts until the user's next change, giving one row per user and cut the user is part of: the work
   grows with users x cuts, never events x cuts, and the running sum goes over a user's change rows only;
6. ``caps``: exact quantiles per cut for winsorisation (``quantile_cont`` / ``quantileExactInclusive``, numpy's
   linear method), over all users in the cut;
7. the final ``SELECT``: per variant and cut, the sums each metric kind needs, and the user count.

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
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlglot import exp
from sqlglot.dialects.clickhouse import ClickHouse
from sqlglot.dialects.duckdb import DuckDB

from analytics.metrics import MetricDefinition
from analytics.stats.models.statistics import CupedMean, Proportion, Ratio, SampleMean, TestStatistic

Measure = Literal["count", "sum", "pre"]


class ExactQuantile(exp.Expression, exp.AggFunc):
    """The exact (linearly interpolated, numpy's default) quantile of ``this`` at ``quantile``."""

    arg_types = {"this": True, "quantile": True}


class DuckDBDialect(DuckDB):
    """DuckDB: ``quantile_cont``."""

    class Generator(DuckDB.Generator):
        TRANSFORMS = {
            **DuckDB.Generator.TRANSFORMS,
            ExactQuantile: lambda self, e: self.func("quantile_cont", e.this, e.args["quantile"]),
        }


class ClickHouseDialect(ClickHouse):
    """ClickHouse: ``quantileExactInclusive`` (numpy's linear method), ``intDiv``."""

    class Generator(ClickHouse.Generator):
        TRANSFORMS = {
            **ClickHouse.Generator.TRANSFORMS,
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


def _lit(value: Any) -> exp.Expression:
    if isinstance(value, str):
        return exp.Literal.string(value)
    return exp.Literal.number(value)


def _col(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table=table)


def _case(condition: exp.Expression, then: exp.Expression, otherwise: exp.Expression | None) -> exp.Case:
    case = exp.case().when(condition, then)
    return case.else_(otherwise) if otherwise is not None else case


def _sum_if(condition: exp.Expression, value: exp.Expression) -> exp.Sum:
    return exp.Sum(this=_case(condition, value, _lit(0)))


def _first_cut_at_or_after(column: exp.Expression, cuts: Sequence[int | None]) -> exp.Expression:
    """Index of the first cut ``c`` with ``column <= c`` (None = no bound); ``len(cuts)`` when there is none."""
    bounded = [c for c in cuts if c is not None]
    beyond = len(bounded) if len(bounded) == len(cuts) else len(cuts) - 1
    if not bounded:
        return _lit(beyond)
    case = exp.case()
    for j, cut in enumerate(bounded):
        case = case.when(exp.LTE(this=column.copy(), expression=_lit(cut)), _lit(j))
    return case.else_(_lit(beyond))


# ---------------------------------------------------------------- what the query reads


@dataclass(frozen=True)
class Relations:
    """Where the raw events are, as relations usable in FROM.

    Outcomes may come in two parts: ``outcomes_unique`` holds no two rows with one event id (a compacted part,
    deduplicated when written); ``outcomes_raw`` may (fresh appends, or a server table). The query deduplicates
    ``outcomes_raw`` and drops its events already in ``outcomes_unique``; either part may be None.
    """

    exposures: exp.Expression
    outcomes_unique: exp.Expression | None = None
    outcomes_raw: exp.Expression | None = None
    user_key: str = "user_id"
    """The column users are grouped and joined by: ``user_id``, or an integer hash of it in both relations
    (much faster to join than text). With a hash key, ``user_check`` is a second, independent hash of the id in
    both relations: a key standing for two user ids shows as two checks and raises ``KeyClash``."""
    user_check: str | None = None

    @property
    def keyed(self) -> bool:
        """True when users are joined by a hash key rather than by ``user_id`` itself."""
        return self.user_key != "user_id"

    def by_user_id(self) -> Relations:
        """The same relations, joined by ``user_id`` (the fallback after a ``KeyClash``)."""
        return dataclasses.replace(self, user_key="user_id", user_check=None)


class KeyClash(RuntimeError):
    """Two different user ids share a hash key in this query: rerun it with ``Relations.by_user_id()``."""


def _from(relation: exp.Expression, alias: str | None = None) -> exp.Expression:
    relation = relation.copy()
    if isinstance(relation, exp.Select):
        return relation.subquery(alias)
    if isinstance(relation, exp.Func):  # a table function, e.g. read_parquet([...])
        relation = exp.Table(this=relation)
    if alias:
        relation.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    return relation


def first_exposure(relations: Relations, experiment_key: str) -> exp.Select:
    """Per exposed user: ``k`` (the user key), ``variant``, ``first_ms`` (the earliest ``(ts, event_id)`` wins);
    with a hash key also ``check_lo`` and ``check_hi``, the user check's range (different when two users share
    the key)."""
    earliest = exp.Tuple(expressions=[_col("ts"), _col("event_id")])
    select = exp.select(
        exp.alias_(_col(relations.user_key), "k"),
        exp.alias_(exp.ArgMin(this=_col("variant"), expression=earliest), "variant"),
        exp.alias_(exp.Min(this=_col("ts")), "first_ms"),
        copy=False,
    )
    if relations.keyed:
        select = select.select(
            exp.alias_(exp.Min(this=_col(relations.user_check or "")), "check_lo"),
            exp.alias_(exp.Max(this=_col(relations.user_check or "")), "check_hi"),
            copy=False,
        )
    return (
        select.from_(_from(relations.exposures), copy=False)
        .where(exp.EQ(this=_col("experiment"), expression=_lit(experiment_key)), copy=False)
        .group_by(_col(relations.user_key), copy=False)
    )


_OUTCOME_COLUMNS = ("event_id", "user_id", "metric", "ts", "value")


def _outcome_columns(relations: Relations) -> tuple[str, ...]:
    if not relations.keyed:
        return _OUTCOME_COLUMNS
    return (*_OUTCOME_COLUMNS, relations.user_key, relations.user_check or "")


def unique_outcomes(relations: Relations, events: Sequence[str] | None = None) -> exp.Select:
    """Outcome rows without duplicate event ids, optionally only those of ``events``."""

    columns = _outcome_columns(relations)

    def of(relation: exp.Expression, alias: str) -> exp.Select:
        select = exp.select(*(_col(c, alias) for c in columns), copy=False).from_(
            _from(relation, alias), copy=False
        )
        if events is not None:
            select = select.where(_col("metric", alias).isin(*(_lit(e) for e in events)), copy=False)
        return select

    unique = of(relations.outcomes_unique, "u") if relations.outcomes_unique is not None else None
    if relations.outcomes_raw is None:
        if unique is None:
            raise ValueError("Relations without outcomes")
        return unique
    keys = [_col(c) for c in columns if c != "value"]
    deduplicated = (
        exp.select(*keys, exp.alias_(exp.Min(this=_col("value")), "value"), copy=False)
        .from_(of(relations.outcomes_raw, "r").subquery("raw"), copy=False)
        .group_by(*[k.copy() for k in keys], copy=False)
    )
    if unique is None:
        return deduplicated
    # Events in both parts: found by a join whose build side is the small raw part, then left out of it.
    again = (
        exp.select(_col("event_id", "d"), copy=False)
        .from_(deduplicated.copy().subquery("d"), copy=False)
        .join(
            of(relations.outcomes_unique, "u2").subquery("k"),
            on=exp.EQ(this=_col("event_id", "k"), expression=_col("event_id", "d")),
            copy=False,
        )
    )
    fresh = (
        exp.select(*(_col(c) for c in columns), copy=False)
        .from_(deduplicated.subquery("f"), copy=False)
        .where(exp.not_(_col("event_id").isin(query=again)), copy=False)
    )
    return exp.union(unique, fresh, distinct=False)


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

    column: Callable[[Need], exp.Expression]
    cap: Callable[[str], exp.Expression]


class MetricKind(abc.ABC):
    """How one kind of metric becomes SQL sums and back a ``TestStatistic``."""

    @abc.abstractmethod
    def needs(self, metric: MetricDefinition) -> list[Need]:
        """The per-user measures the metric reads."""

    def caps(self, metric: MetricDefinition, values: UserValues) -> dict[str, tuple[exp.Expression, float]]:
        """Quantiles the metric clips by, per cut over all users in it: name -> (per-user value, quantile)."""
        return {}

    @abc.abstractmethod
    def sums(self, metric: MetricDefinition, values: UserValues) -> dict[str, exp.Expression]:
        """Per-user expressions summed per variant and cut (name -> expression)."""

    @abc.abstractmethod
    def statistic(self, metric: MetricDefinition, n: int, sums: dict[str, float]) -> TestStatistic:
        """The variant's statistic from its user count and the sums named as in ``sums``."""


def _clip(
    value: exp.Expression, lower: exp.Expression | None, upper: exp.Expression | None
) -> exp.Expression:
    """``value`` limited to [lower, upper]; a NULL (or NaN) bound does not clip, like numpy with no bound."""
    if lower is None and upper is None:
        return value
    value = exp.Cast(this=value, to=exp.DataType.build("double"))  # one type in every branch (ClickHouse)
    case = exp.case()
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

    def _raw(self, metric: MetricDefinition, values: UserValues) -> tuple[exp.Expression, exp.Expression]:
        value: exp.Expression = values.column(self._value_need(metric))
        if metric.type == "binomial":
            value = _case(exp.GT(this=value, expression=_lit(0)), _lit(1), _lit(0))
        return value, values.column(Need(metric.event or "", "pre"))

    def caps(self, metric: MetricDefinition, values: UserValues) -> dict[str, tuple[exp.Expression, float]]:
        w = metric.winsorize
        if w is None:
            return {}
        value, pre = self._raw(metric, values)
        out = {}
        for side, quantile in (("lo", w.lower_quantile), ("hi", w.upper_quantile)):
            if quantile is not None:
                out[f"v{side}"] = (value, quantile)
                if metric.cuped:
                    out[f"p{side}"] = (pre, quantile)
        return out

    def _bounds(
        self, metric: MetricDefinition, values: UserValues, prefix: str
    ) -> tuple[exp.Expression | None, exp.Expression | None]:
        w = metric.winsorize
        if w is None:
            return None, None
        lower = values.cap(f"{prefix}lo") if w.lower_quantile is not None else None
        upper = values.cap(f"{prefix}hi") if w.upper_quantile is not None else None
        if w.lower_value is not None:
            lower = _lit(float(w.lower_value))
        if w.upper_value is not None:
            upper = _lit(float(w.upper_value))
        return lower, upper

    def sums(self, metric: MetricDefinition, values: UserValues) -> dict[str, exp.Expression]:
        value, pre = self._raw(metric, values)
        value = _clip(value, *self._bounds(metric, values, "v"))
        out = {"v": value, "vv": exp.Mul(this=value.copy(), expression=value.copy())}
        if metric.cuped:
            pre = _clip(pre, *self._bounds(metric, values, "p"))
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

    def sums(self, metric: MetricDefinition, values: UserValues) -> dict[str, exp.Expression]:
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


# How each measure of a user is computed from one row of ``attributed`` (``o``: the event, NULL when none): the
# event's contribution, and whether it counts when attributed (cumulated up to each cut) or before exposure.
MEASURES: dict[str, tuple[Callable[[str], exp.Expression], bool]] = {
    "count": (lambda o: _lit(1), True),
    "sum": (lambda o: _col("value", o), True),
    "pre": (lambda o: _col("value", o), False),
}


@dataclass
class _Layout:
    """The measures the query computes, in column order (``x0``, ``x1``, ...)."""

    needs: list[Need] = field(default_factory=list)

    def need_index(self, need: Need) -> int:
        if need not in self.needs:
            self.needs.append(need)
        return self.needs.index(need)


def _cuts_relation(count: int) -> exp.Expression:
    """``SELECT 0 AS j UNION ALL SELECT 1 AS j ...``: the cut indexes (portable: no VALUES table syntax)."""
    selects = [exp.select(exp.alias_(_lit(j), "j"), copy=False) for j in range(count)]
    relation: exp.Expression = selects[0]
    for select in selects[1:]:
        relation = exp.union(relation, select, distinct=False, copy=False)
    return relation


def _user_cut_ctes(
    relations: Relations,
    experiment_key: str,
    needs: Sequence[Need],
    cuts: Sequence[int | None],
    window_ms: int | None,
    layout: _Layout,
) -> list[tuple[str, exp.Expression]]:
    """The CTEs down to ``user_cut``: one row per user and cut the user is part of, holding ``x<i>`` = the user's
    measure ``layout.needs[i]`` at that cut, with columns ``k, variant, j, x0..., clash``.

    Per user, ``state`` keeps one row per cut ``at`` which the user's attributed events changed (plus the entry
    row at the user's first cut, holding the pre-exposure sums); with several cuts ``cum`` cumulates those rows
    with a window over the user's few rows and ``user_cut`` spreads each over the cuts ``until`` the next change:
    rows for users x cuts, never events x cuts, and no wide per-cut columns.
    """
    for need in needs:
        layout.need_index(need)
    n_cuts = len(cuts)
    events = sorted({need.event for need in layout.needs})
    f, o = "f", "o"
    bucket = exp.case(copy=False).when(
        exp.LT(this=_col("ts", o), expression=_col("first_ms", f)), _lit(-1), copy=False
    )
    if window_ms is not None:
        end = exp.Add(this=_col("first_ms", f), expression=_lit(int(window_ms)))
        bucket = bucket.when(exp.GTE(this=_col("ts", o), expression=end), _lit(-2), copy=False)
    bounded = _first_cut_at_or_after(_col("ts", o), cuts)
    if isinstance(bounded, exp.Case):
        for when in bounded.args["ifs"]:
            bucket = bucket.when(when.this, when.args["true"], copy=False)
        bucket = bucket.else_(bounded.args["default"], copy=False)
    else:
        bucket = bucket.else_(bounded, copy=False)
    j0 = exp.alias_(_first_cut_at_or_after(_col("first_ms", f), cuts), "j0")
    # One row per (user, event) of the metrics' events, and one entry row per user (no event, b = -2): every
    # user is present from its first cut on, with or without events.
    event_rows: list[exp.Expression] = [_col("k", f), _col("variant", f), j0, exp.alias_(bucket, "b")]
    entry_rows: list[exp.Expression] = [
        _col("k", f),
        _col("variant", f),
        j0.copy(),
        exp.alias_(_lit(-2), "b"),
    ]
    for i, need in enumerate(layout.needs):
        contribution, _ = MEASURES[need.measure]
        is_event = exp.EQ(this=_col("metric", o), expression=_lit(need.event))
        event_rows.append(exp.alias_(_case(is_event, contribution(o), _lit(0)), f"x{i}"))
        entry_rows.append(exp.alias_(_lit(0), f"x{i}"))
    if (
        relations.keyed
    ):  # 1 where the key stands for two user ids (exposed ones, or an event's and its user's)
        event_clash = exp.NEQ(this=_col(relations.user_check or "", o), expression=_col("check_lo", f))
        entry_clash = exp.NEQ(this=_col("check_lo", f), expression=_col("check_hi", f))
        event_rows.append(exp.alias_(_case(event_clash, _lit(1), _lit(0)), "clash"))
        entry_rows.append(exp.alias_(_case(entry_clash, _lit(1), _lit(0)), "clash"))
    else:
        event_clash = entry_clash = exp.false()
        event_rows.append(exp.alias_(_lit(0), "clash"))
        entry_rows.append(exp.alias_(_lit(0), "clash"))
    single = n_cuts == 1  # then a user's rows all fold into one: a LEFT JOIN keeps users without events
    if single and relations.keyed:
        event_rows[-1] = exp.alias_(_case(exp.or_(event_clash, entry_clash), _lit(1), _lit(0)), "clash")
    with_events = (
        exp.select(*event_rows, copy=False)
        .from_(_from(exp.to_table("first_exposure"), f), copy=False)
        .join(
            _from(exp.to_table("events"), o),
            on=exp.EQ(this=_col(relations.user_key, o), expression=_col("k", f)),
            join_type="left" if single else None,
            copy=False,
        )
    )
    entries = exp.select(*entry_rows, copy=False).from_(_from(exp.to_table("first_exposure"), f), copy=False)
    attributed = with_events if single else exp.union(with_events, entries, distinct=False, copy=False)
    # Events that count fold into their bucket; the rest (pre-exposure, unattributed, none) into the entry row.
    counts = exp.and_(
        exp.GTE(this=_col("b"), expression=_lit(0)), exp.LT(this=_col("b"), expression=_lit(n_cuts))
    )
    row_bucket = _case(counts, _col("b"), _col("j0"))
    state_columns: list[exp.Expression] = [
        _col("k"),
        exp.alias_(exp.AnyValue(this=_col("variant")), "variant"),
        exp.alias_(exp.AnyValue(this=_col("j0")) if single else row_bucket, "at"),
    ]
    for i, need in enumerate(layout.needs):
        _, attributed_only = MEASURES[need.measure]
        when = counts.copy() if attributed_only else exp.EQ(this=_col("b"), expression=_lit(-1))
        state_columns.append(exp.alias_(_sum_if(when, _col(f"x{i}")), f"x{i}"))
    state_columns.append(exp.alias_(exp.Max(this=_col("clash")), "clash"))
    state = (
        exp.select(*state_columns, copy=False)
        .from_("attributed", copy=False)
        .group_by(*([_col("k")] if single else [_col("k"), _col("at")]), copy=False)
    )
    ctes: list[tuple[str, exp.Expression]] = [
        ("first_exposure", first_exposure(relations, experiment_key)),
        ("events", unique_outcomes(relations, events)),
        ("attributed", attributed),
        ("state", state),
    ]
    measures = [f"x{i}" for i in range(len(layout.needs))]
    if n_cuts == 1:
        user_cut = (
            exp.select(_col("k"), _col("variant"), exp.alias_(_lit(0), "j"), *map(_col, measures), _col("clash"),
                       copy=False)
            .from_("state", copy=False)
            .where(exp.LT(this=_col("at"), expression=_lit(1)), copy=False)
        )  # fmt: skip
        return [*ctes, ("user_cut", user_cut)]
    user = exp.Window(this=None, partition_by=[_col("k")])
    in_order = exp.Window(
        this=None,
        partition_by=[_col("k")],
        order=exp.Order(expressions=[exp.Ordered(this=_col("at"))]),
        spec=exp.WindowSpec(kind="ROWS", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW"),
    )

    def over(function: exp.Expression, window: exp.Window) -> exp.Window:
        window = window.copy()
        window.set("this", function)
        return window

    ordered = exp.Window(
        this=None, partition_by=[_col("k")], order=exp.Order(expressions=[exp.Ordered(this=_col("at"))])
    )
    next_bucket = exp.Lead(this=_col("at"), offset=_lit(1), default=_lit(n_cuts))
    cum_columns: list[exp.Expression] = [
        _col("k"),
        _col("variant"),
        _col("at"),
        exp.alias_(over(next_bucket, ordered), "until"),
    ]
    for i, need in enumerate(layout.needs):
        _, attributed_only = MEASURES[need.measure]
        cum_columns.append(
            exp.alias_(over(exp.Sum(this=_col(f"x{i}")), in_order if attributed_only else user), f"x{i}")
        )
    cum_columns.append(exp.alias_(over(exp.Max(this=_col("clash")), user), "clash"))
    cum = exp.select(*cum_columns, copy=False).from_("state", copy=False)
    spread = exp.and_(
        exp.GTE(this=_col("j", "cuts"), expression=_col("at", "c")),
        exp.LT(this=_col("j", "cuts"), expression=_col("until", "c")),
    )
    user_cut = (
        exp.select(
            _col("k", "c"), _col("variant", "c"), _col("j", "cuts"), *(_col(x, "c") for x in measures),
            _col("clash", "c"), copy=False,
        )
        .from_(_from(exp.to_table("cum"), "c"), copy=False)
        .join(_cuts_relation(n_cuts).subquery("cuts"), join_type="cross", copy=False)
        .where(spread, copy=False)
    )  # fmt: skip
    return [*ctes, ("cum", cum), ("user_cut", user_cut)]


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
        """``[cut][metric]`` -> variant -> statistic, from the query's result rows (one per variant and cut)."""
        index = {name: i for i, name in enumerate(columns)}
        if "key_clashes" in index and any(row[index["key_clashes"]] for row in rows):
            raise KeyClash("two user ids share a hash key")
        out: list[list[dict[str, TestStatistic]]] = [[{} for _ in self.metrics] for _ in self.cuts]
        for row in rows:
            variant, j, n = row[index["variant"]], int(row[index["j"]]), int(row[index["n"]])
            for m, metric in enumerate(self.metrics):
                sums = {s: float(row[index[f"m{m}_{s}"]] or 0.0) for s in self.sums[m]}
                out[j][m][variant] = kind_of(metric).statistic(metric, n, sums)
        return out


def compile_report(
    relations: Relations,
    experiment_key: str,
    metrics: Sequence[MetricDefinition],
    cuts: Sequence[int | None],
    window_ms: int | None,
    dialect: str,
) -> CompiledReport:
    """One query for ``metrics`` of ``experiment_key`` at every cut (ascending; the last may be None = all).

    Variants without users at a cut are left out of that cut, as in the row path.
    """
    if not cuts:
        raise ValueError("at least one cut point (None = everything)")
    bounded = [c for c in cuts if c is not None]
    if bounded != sorted(bounded) or None in cuts[:-1]:
        raise ValueError(f"cuts must ascend, with None only last: {list(cuts)}")
    layout = _Layout()
    needs = [need for metric in metrics for need in kind_of(metric).needs(metric)]
    ctes = _user_cut_ctes(relations, experiment_key, needs, cuts, window_ms, layout)
    u = "u"

    def values(m: int) -> UserValues:
        return UserValues(
            column=lambda need: _col(f"x{layout.need_index(need)}", u),
            cap=lambda name: _col(f"cap_m{m}_{name}", "caps"),
        )

    cap_columns = []
    for m, metric in enumerate(metrics):
        for name, (value, quantile) in kind_of(metric).caps(metric, values(m)).items():
            as_double = exp.Cast(this=value, to=exp.DataType.build("double"))
            cap_columns.append(
                exp.alias_(ExactQuantile(this=as_double, quantile=_lit(float(quantile))), f"cap_m{m}_{name}")
            )
    final_columns: list[exp.Expression] = [
        _col("variant", u),
        _col("j", u),
        exp.alias_(exp.Count(this=exp.Star()), "n"),
        exp.alias_(exp.Sum(this=_col("clash", u)), "key_clashes"),
    ]
    sums = []
    for m, metric in enumerate(metrics):
        named = kind_of(metric).sums(metric, values(m))
        sums.append(tuple(named))
        final_columns += [exp.alias_(exp.Sum(this=value), f"m{m}_{name}") for name, value in named.items()]
    final = exp.select(*final_columns, copy=False).from_(_from(exp.to_table("user_cut"), u), copy=False)
    if cap_columns:
        caps = (
            exp.select(_col("j", u), *cap_columns, copy=False)
            .from_(_from(exp.to_table("user_cut"), u), copy=False)
            .group_by(_col("j", u), copy=False)
        )
        ctes.append(("caps", caps))
        final = final.join(
            exp.to_table("caps"), on=exp.EQ(this=_col("j", "caps"), expression=_col("j", u)), copy=False
        )
    final = final.group_by(_col("variant", u), _col("j", u), copy=False).order_by(
        _col("variant", u), _col("j", u), copy=False
    )
    for name, cte in ctes:
        # user_cut is read twice (caps, final): DuckDB would compute it twice unless told to materialise it
        materialized = True if name == "user_cut" and cap_columns and dialect == "duckdb" else None
        final = final.with_(name, as_=cte, materialized=materialized, copy=False)
    return CompiledReport(
        sql=final.sql(dialect=DIALECTS[dialect]), metrics=tuple(metrics), cuts=tuple(cuts), sums=tuple(sums)
    )


def compile_user_rows(
    relations: Relations,
    experiment_key: str,
    event: str,
    until_ms: int | None,
    window_ms: int | None,
    dialect: str,
) -> str:
    """Per exposed user, ordered by user id: ``variant, value_sum, event_count, pre_sum`` of ``event``.

    The SQL twin of ``EventStore.user_metric_values`` (for inspection and tests; reports use ``compile_report``).
    """
    needs = [Need(event, "sum"), Need(event, "count"), Need(event, "pre")]
    ctes = _user_cut_ctes(relations.by_user_id(), experiment_key, needs, [until_ms], window_ms, _Layout())
    select = exp.select(
        _col("variant"),
        exp.alias_(_col("x0"), "value_sum"),
        exp.alias_(_col("x1"), "event_count"),
        exp.alias_(_col("x2"), "pre_sum"),
        copy=False,
    ).from_("user_cut", copy=False)
    for name, cte in ctes:
        select = select.with_(name, as_=cte, copy=False)
    return select.order_by(_col("k"), copy=False).sql(dialect=DIALECTS[dialect])


# ---------------------------------------------------------------- small queries over the raw events


def _render(select: exp.Expression, dialect: str) -> str:
    return select.sql(dialect=DIALECTS[dialect])


def experiments_query(relations: Relations, dialect: str) -> str:
    """Experiment keys with at least one exposure, sorted."""
    select = (
        exp.select(_col("experiment"), copy=False)
        .distinct(copy=False)
        .from_(_from(relations.exposures), copy=False)
        .order_by(_col("experiment"), copy=False)
    )
    return _render(select, dialect)


def variant_counts_query(relations: Relations, experiment_key: str, dialect: str) -> str:
    """Users per variant (of their first exposure)."""
    select = (
        exp.select(_col("variant"), exp.alias_(exp.Count(this=exp.Star()), "users"), copy=False)
        .from_(first_exposure(relations.by_user_id(), experiment_key).subquery("f"), copy=False)
        .group_by(_col("variant"), copy=False)
        .order_by(_col("variant"), copy=False)
    )
    return _render(select, dialect)


def exposure_timeline_query(relations: Relations, experiment_key: str, bucket_ms: int, dialect: str) -> str:
    """Newly exposed users per bucket of ``bucket_ms`` and variant."""
    start = exp.Mul(
        this=exp.IntDiv(this=_col("first_ms"), expression=_lit(bucket_ms)), expression=_lit(bucket_ms)
    )
    select = (
        exp.select(
            exp.alias_(start, "bucket_start"),
            _col("variant"),
            exp.alias_(exp.Count(this=exp.Star()), "users"),
            copy=False,
        )
        .from_(first_exposure(relations.by_user_id(), experiment_key).subquery("f"), copy=False)
        .group_by(_col("bucket_start"), _col("variant"), copy=False)
        .order_by(_col("bucket_start"), _col("variant"), copy=False)
    )
    return _render(select, dialect)


def time_range_query(relations: Relations, experiment_key: str, dialect: str) -> str:
    """Earliest and latest exposure time of the experiment."""
    select = (
        exp.select(
            exp.alias_(exp.Min(this=_col("ts")), "lo"), exp.alias_(exp.Max(this=_col("ts")), "hi"), copy=False
        )
        .from_(_from(relations.exposures), copy=False)
        .where(exp.EQ(this=_col("experiment"), expression=_lit(experiment_key)), copy=False)
    )
    return _render(select, dialect)


def metrics_query(relations: Relations, dialect: str) -> str:
    """Outcome names, sorted."""
    select = (
        exp.select(_col("metric"), copy=False)
        .distinct(copy=False)
        .from_(unique_outcomes(relations).subquery("o"), copy=False)
        .order_by(_col("metric"), copy=False)
    )
    return _render(select, dialect)


def counts_query(relations: Relations, dialect: str) -> str:
    """Exposed (experiment, user) pairs and distinct outcome events."""
    pairs = (
        exp.select(_col("experiment"), _col("user_id"), copy=False)
        .from_(_from(relations.exposures), copy=False)
        .group_by(_col("experiment"), _col("user_id"), copy=False)
    )
    exposed = exp.select(exp.Count(this=exp.Star()), copy=False).from_(pairs.subquery("p"), copy=False)
    outcomes = exp.select(exp.Count(this=exp.Star()), copy=False).from_(
        unique_outcomes(relations).subquery("o"), copy=False
    )
    select = exp.select(
        exp.alias_(exposed.subquery(), "exposed_users"),
        exp.alias_(outcomes.subquery(), "outcomes"),
        copy=False,
    )
    return _render(select, dialect)
