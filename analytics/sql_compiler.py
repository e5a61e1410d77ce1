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

1. ``first_exposure``: per user, variant, first exposure time, and ``j0``, the first cut the user is part of;
2. ``events``: the deduplicated outcomes of the metrics' events (``Relations`` says what needs deduplicating);
3. ``attributed``: users left-joined to their events, each row tagged with its bucket ``b`` (-1 pre-exposure,
   -2 not attributed, else the first cut the event counts at) and one contribution column per needed measure;
4. ``user_buckets`` (with several cuts): the same summed per user and bucket, so the next stage pivots a table
   about as long as the user list instead of the event list;
5. ``per_user``: per user, each measure cumulated up to every cut (``SUM(CASE WHEN b BETWEEN 0 AND j ...)``):
   no window functions, no per-user running sums;
6. ``caps``: exact quantiles for winsorisation (``quantile_cont`` / ``quantileExactInclusive``), per cut over all
   users in it;
7. the final ``SELECT``: per variant and cut, the sums each metric kind needs.

Determinism: counts, binomial and count statistics are integer sums and come out bit-identical to the Python
reference. Sums of real values (continuous, winsorised, CUPED, ratios of sums) are summed by the engine's
parallel aggregation, whose order varies with threads and data layout, so they can move in the 13th significant
digit between engines or runs (tests compare at 1e-9 relative).

Extension point: a metric kind (``MetricKind``) says which per-user measures it needs (``Need``), which per-user
expressions to sum per variant at a cut, and how to turn the sums into a ``TestStatistic``. Register a new one
with ``register_kind``; nothing else in the compiler changes. A kind that needs a per-user state other than
event counts and sums (for example interleaving wins per request) adds its own columns to ``per_user`` through
``MetricKind.user_columns`` and reads them in ``sums``.
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
    (much faster to join than text). A hash key is checked: two user ids on one key raise ``KeyClash``."""

    @property
    def keyed(self) -> bool:
        """True when users are joined by a hash key rather than by ``user_id`` itself."""
        return self.user_key != "user_id"

    def by_user_id(self) -> Relations:
        """The same relations, joined by ``user_id`` (the fallback after a ``KeyClash``)."""
        return dataclasses.replace(self, user_key="user_id")


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
    with a hash key also ``user_id`` and ``user_id_max`` (different when two users share the key)."""
    earliest = exp.Tuple(expressions=[_col("ts"), _col("event_id")])
    select = exp.select(
        exp.alias_(_col(relations.user_key), "k"),
        exp.alias_(exp.ArgMin(this=_col("variant"), expression=earliest), "variant"),
        exp.alias_(exp.Min(this=_col("ts")), "first_ms"),
        copy=False,
    )
    if relations.keyed:
        select = select.select(
            exp.alias_(exp.Min(this=_col("user_id")), "user_id"),
            exp.alias_(exp.Max(this=_col("user_id")), "user_id_max"),
            copy=False,
        )
    return (
        select.from_(_from(relations.exposures), copy=False)
        .where(exp.EQ(this=_col("experiment"), expression=_lit(experiment_key)), copy=False)
        .group_by(_col(relations.user_key), copy=False)
    )


_OUTCOME_COLUMNS = ("event_id", "user_id", "metric", "ts", "value")


def _outcome_columns(relations: Relations) -> tuple[str, ...]:
    return (*_OUTCOME_COLUMNS, relations.user_key) if relations.keyed else _OUTCOME_COLUMNS


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
    """Names of the ``per_user`` columns a kind reads at one cut (``column(need)``), plus the cut's caps."""

    cut: int
    column: Callable[[Need], exp.Column]
    cap: Callable[[str], exp.Column]


class MetricKind(abc.ABC):
    """How one kind of metric becomes SQL sums and back a ``TestStatistic``."""

    @abc.abstractmethod
    def needs(self, metric: MetricDefinition) -> list[Need]:
        """The per-user measures the metric reads."""

    def user_columns(self, metric: MetricDefinition) -> dict[str, exp.Expression]:
        """Extra ``per_user`` aggregates (name -> aggregate over ``attributed`` rows); none by default."""
        return {}

    def caps(self, metric: MetricDefinition, values: UserValues) -> dict[str, tuple[exp.Expression, float]]:
        """Quantiles the metric clips by at this cut: name -> (per-user value, quantile); none by default."""
        return {}

    @abc.abstractmethod
    def sums(self, metric: MetricDefinition, values: UserValues) -> dict[str, exp.Expression]:
        """Per-user expressions summed per variant at this cut (name -> expression)."""

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


@dataclass
class _Layout:
    """Column bookkeeping shared by the CTEs and the decoder."""

    needs: list[Need] = field(default_factory=list)
    # (cut, metric index) -> sum names in result-column order
    sums: dict[tuple[int, int], list[str]] = field(default_factory=dict)

    def need_index(self, need: Need) -> int:
        if need not in self.needs:
            self.needs.append(need)
        return self.needs.index(need)


def _contribution(layout: _Layout, need: Need) -> str:
    """The ``attributed`` column a need sums: the event's count or its value."""
    events = sorted({n.event for n in layout.needs})
    return f"{'n' if need.measure == 'count' else 'v'}{events.index(need.event)}"


def _per_user(
    relations: Relations,
    experiment_key: str,
    metrics: Sequence[MetricDefinition],
    cuts: Sequence[int | None],
    window_ms: int | None,
    layout: _Layout,
) -> exp.Select:
    """``WITH first_exposure, events, attributed[, user_buckets]`` and the ``per_user`` select (no WITH yet)."""
    for metric in metrics:
        for need in kind_of(metric).needs(metric):
            layout.need_index(need)
    events = sorted({need.event for need in layout.needs})
    first = first_exposure(relations, experiment_key)
    f, o = "f", "o"
    bucket = exp.case().when(exp.Is(this=_col("ts", o), expression=exp.Null()), _lit(-2))
    bucket = bucket.when(exp.LT(this=_col("ts", o), expression=_col("first_ms", f)), _lit(-1))
    if window_ms is not None:
        end = exp.Add(this=_col("first_ms", f), expression=_lit(int(window_ms)))
        bucket = bucket.when(exp.GTE(this=_col("ts", o), expression=end), _lit(-2))
    bounded = _first_cut_at_or_after(_col("ts", o), cuts)
    if isinstance(bounded, exp.Case):
        for when in bounded.args["ifs"]:
            bucket = bucket.when(when.this, when.args["true"])
        bucket = bucket.else_(bounded.args["default"])
    else:
        bucket = bucket.else_(bounded)
    contributions: dict[str, exp.Expression] = {}  # one column per (event, count or value), shared by needs
    for need in layout.needs:
        name = _contribution(layout, need)
        if name not in contributions:
            amount = _lit(1) if need.measure == "count" else _col("value", o)
            is_event = exp.EQ(this=_col("metric", o), expression=_lit(need.event))
            contributions[name] = exp.alias_(_case(is_event, amount, _lit(0)), name)
    extra_columns = {name: agg for m in metrics for name, agg in kind_of(m).user_columns(m).items()}
    if (
        relations.keyed
    ):  # 1 where the key stands for two user ids (exposed ones, or an event's and its user's)
        clash = exp.or_(
            exp.NEQ(this=_col("user_id", f), expression=_col("user_id_max", f)),
            exp.NEQ(this=_col("user_id", o), expression=_col("user_id", f)),
        )
        contributions["clash"] = exp.alias_(_case(clash, _lit(1), _lit(0)), "clash")
    attributed = (
        exp.select(
            _col("k", f),
            _col("variant", f),
            exp.alias_(_first_cut_at_or_after(_col("first_ms", f), cuts), "j0"),
            exp.alias_(bucket, "b"),
            *contributions.values(),
            copy=False,
        )
        .from_(_from(exp.to_table("first_exposure"), f), copy=False)
        .join(
            _from(exp.to_table("events"), o),
            on=exp.EQ(this=_col(relations.user_key, o), expression=_col("k", f)),
            join_type="left",
            copy=False,
        )
    )
    ctes = [
        ("first_exposure", first),
        ("events", unique_outcomes(relations, events)),
        ("attributed", attributed),
    ]
    source = "attributed"
    if len(cuts) > 1 and not extra_columns:
        xs = list(contributions)
        user_buckets = (
            exp.select(
                _col("k"),
                exp.alias_(exp.AnyValue(this=_col("variant")), "variant"),
                exp.alias_(exp.AnyValue(this=_col("j0")), "j0"),
                _col("b"),
                *(exp.alias_(exp.Sum(this=_col(x)), x) for x in xs),
                copy=False,
            )
            .from_("attributed", copy=False)
            .group_by(_col("k"), _col("b"), copy=False)
        )
        ctes.append(("user_buckets", user_buckets))
        source = "user_buckets"
    columns: list[exp.Expression] = [
        _col("k"),
        exp.alias_(exp.AnyValue(this=_col("variant")), "variant"),
        exp.alias_(exp.AnyValue(this=_col("j0")), "j0"),
    ]
    for i, need in enumerate(layout.needs):
        x = _col(_contribution(layout, need))
        if need.measure == "pre":
            columns.append(exp.alias_(_sum_if(exp.EQ(this=_col("b"), expression=_lit(-1)), x), f"x{i}_pre"))
            continue
        for j in range(len(cuts)):
            in_cut = exp.Between(this=_col("b"), low=_lit(0), high=_lit(j))
            columns.append(exp.alias_(_sum_if(in_cut, x.copy()), f"x{i}_{j}"))
    if relations.keyed:
        columns.append(exp.alias_(exp.Max(this=_col("clash")), "clash"))
    columns += [exp.alias_(agg, name) for name, agg in extra_columns.items()]
    per_user = exp.select(*columns, copy=False).from_(source, copy=False).group_by(_col("k"), copy=False)
    for name, cte in ctes:
        per_user = per_user.with_(name, as_=cte, copy=False)
    return per_user


def _user_values(layout: _Layout, cut: int, metric_index: int) -> UserValues:
    def column(need: Need) -> exp.Column:
        i = layout.need_index(need)
        return _col(f"x{i}_pre" if need.measure == "pre" else f"x{i}_{cut}")

    return UserValues(
        cut=cut, column=column, cap=lambda name: _col(f"cap_m{metric_index}_c{cut}_{name}", "caps")
    )


@dataclass(frozen=True)
class CompiledReport:
    """A compiled report query and what its result columns mean."""

    sql: str
    metrics: tuple[MetricDefinition, ...]
    cuts: tuple[int | None, ...]
    layout: _Layout

    def decode(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> list[list[dict[str, TestStatistic]]]:
        """``[cut][metric]`` -> variant -> statistic, from the query's result rows."""
        index = {name: i for i, name in enumerate(columns)}
        if "key_clashes" in index and any(row[index["key_clashes"]] for row in rows):
            raise KeyClash("two user ids share a hash key")
        out: list[list[dict[str, TestStatistic]]] = [[{} for _ in self.metrics] for _ in self.cuts]
        for row in rows:
            variant = row[index["variant"]]
            for j in range(len(self.cuts)):
                n = int(row[index[f"n_c{j}"]] or 0)
                for m, metric in enumerate(self.metrics):
                    sums = {s: float(row[index[f"m{m}_c{j}_{s}"]] or 0.0) for s in self.layout.sums[(j, m)]}
                    if n > 0:
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
    per_user = _per_user(relations, experiment_key, metrics, cuts, window_ms, layout)
    ctes = {cte.alias: cte.this for cte in per_user.args["with_"].expressions}
    per_user.set("with_", None)
    in_cut = [exp.LTE(this=_col("j0"), expression=_lit(j)) for j in range(len(cuts))]
    cap_columns = []
    for j in range(len(cuts)):
        for m, metric in enumerate(metrics):
            for name, (value, quantile) in kind_of(metric).caps(metric, _user_values(layout, j, m)).items():
                values = _case(in_cut[j].copy(), exp.Cast(this=value, to=exp.DataType.build("double")), None)
                quantile_of = ExactQuantile(this=values, quantile=_lit(float(quantile)))
                cap_columns.append(exp.alias_(quantile_of, f"cap_m{m}_c{j}_{name}"))
    final_columns: list[exp.Expression] = [_col("variant")]
    if relations.keyed:
        final_columns.append(exp.alias_(exp.Sum(this=_col("clash")), "key_clashes"))
    for j in range(len(cuts)):
        final_columns.append(exp.alias_(_sum_if(in_cut[j].copy(), _lit(1)), f"n_c{j}"))
        for m, metric in enumerate(metrics):
            sums = kind_of(metric).sums(metric, _user_values(layout, j, m))
            layout.sums[(j, m)] = list(sums)
            for name, value in sums.items():
                final_columns.append(exp.alias_(_sum_if(in_cut[j].copy(), value), f"m{m}_c{j}_{name}"))
    final = exp.select(*final_columns, copy=False).from_("per_user", copy=False)
    if cap_columns:
        final = final.join(exp.to_identifier("caps"), join_type="cross", copy=False)
    final = final.group_by(_col("variant"), copy=False).order_by(_col("variant"), copy=False)
    for name, cte in ctes.items():
        final = final.with_(name, as_=cte, copy=False)
    # DuckDB computes a CTE once per reference unless told to materialise it (ClickHouse has no such clause).
    final = final.with_(
        "per_user",
        as_=per_user,
        materialized=True if dialect == "duckdb" and cap_columns else None,
        copy=False,
    )
    if cap_columns:
        final = final.with_("caps", as_=exp.select(*cap_columns, copy=False).from_("per_user", copy=False))
    return CompiledReport(
        sql=final.sql(dialect=DIALECTS[dialect]), metrics=tuple(metrics), cuts=tuple(cuts), layout=layout
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
    relations = relations.by_user_id()
    layout = _Layout()
    needs = [Need(event, "sum"), Need(event, "count"), Need(event, "pre")]
    for need in needs:
        layout.need_index(need)
    per_user = _per_user(relations, experiment_key, [], [until_ms], window_ms, layout)
    select = exp.select(
        _col("variant"),
        exp.alias_(_col("x0_0"), "value_sum"),
        exp.alias_(_col("x1_0"), "event_count"),
        exp.alias_(_col("x2_pre"), "pre_sum"),
        copy=False,
    ).from_(per_user.subquery("pu"), copy=False)
    if until_ms is not None:
        select = select.where(exp.LTE(this=_col("j0"), expression=_lit(0)), copy=False)
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
