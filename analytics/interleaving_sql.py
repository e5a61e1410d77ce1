"""The credit of interleaving experiments compiled to SQL: per-cut preference counts, computed where the events are.

The reference is ``analytics.interleaving`` (``user_preferences`` / ``preference_counts_at``); this is its SQL twin,
built with sqlglot like ``analytics.sql_compiler`` and rendered for DuckDB or ClickHouse. It reads two raw,
append-only tables:

- ``interleaved(event_id, experiment, user_id, request_id, ts, item_ids, teams, arm_a_key, arm_a_model,
  arm_a_version, arm_b_key, arm_b_model, arm_b_version)``: the lists of each interleaved exposure;
- ``item_outcomes(event_id, user_id, request_id, item_id, metric, ts)``: outcomes that name a request and
  an item (an outcome without an item is not there: it credits no arm).

Stages (CTEs):

1. ``requests``: per (user, request) of the experiment, the items and teams of its first exposure (earliest
   ``(ts, event_id)``) and that time;
2. ``clicked``: the distinct (user, request, item) click triples, each at its earliest click;
3. ``credits``: each triple whose request is one of the user's interleaved requests and whose item is in its
   list, with the team of that item there (found by position, no unnesting) and the first cut it counts at:
   ``greatest(click time, request time)`` at or before the cut;
4. ``state``: per user and cut index, the credits that start counting there, plus one entry row at the user's
   first cut (users without clicks count too);
5. ``user_cut``: per user and cut, the cumulative credits ``a`` and ``b`` (state rows spread over the cuts at
   or after them: rows for users x change points x cuts, a handful per user);
6. the final ``SELECT``: per cut, n, wins_a (a > b), wins_b, ties (a = b > 0), the sum of d = b - a and of d².

In an analysis window ``[start, end)`` (``analytics.interleaving.in_window``, rule 5) ``requests`` holds
only the exposures before the end, of users whose first interleaved exposure is at or after the start, and
``clicked`` only the clicks before the end. ``arms_query`` (the arm pairs, rule 6) reads the same exposures.

Every sum is an integer sum, so the counts are exact and identical on both engines and in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from analytics import sql_compiler as sql
from analytics.analysis_window import ALL_TIME, AnalysisWindow
from analytics.interleaving import Arm, ArmsSeen
from analytics.stats.models.statistics import PreferenceCounts

_col, _lit, _case, _sum_if, _from = sql._col, sql._lit, sql._case, sql._sum_if, sql._from


class ListPosition(exp.Expression, exp.Func):
    """1-based position of ``expression`` in the array ``this``; 0 when it is not there."""

    arg_types = {"this": True, "expression": True}


class ListItem(exp.Expression, exp.Func):
    """The element of the array ``this`` at the 1-based position ``expression``."""

    arg_types = {"this": True, "expression": True}


class DuckDBDialect(sql.DuckDBDialect):
    """The compiler's DuckDB dialect plus ``list_position`` (NULL when absent, so coalesced) and ``list_element``."""

    class Generator(sql.DuckDBDialect.Generator):
        TRANSFORMS = {
            **sql.DuckDBDialect.Generator.TRANSFORMS,
            ListPosition: lambda self, e: f"COALESCE({self.func('list_position', e.this, e.expression)}, 0)",
            ListItem: lambda self, e: self.func("list_element", e.this, e.expression),
        }


class ClickHouseDialect(sql.ClickHouseDialect):
    """The compiler's ClickHouse dialect plus ``indexOf`` (0 when absent) and ``arrayElement``."""

    class Generator(sql.ClickHouseDialect.Generator):
        TRANSFORMS = {
            **sql.ClickHouseDialect.Generator.TRANSFORMS,
            ListPosition: lambda self, e: self.func("indexOf", e.this, e.expression),
            ListItem: lambda self, e: self.func("arrayElement", e.this, e.expression),
        }


DIALECTS = {"duckdb": DuckDBDialect, "clickhouse": ClickHouseDialect}

ARM_COLUMNS = ("arm_a_key", "arm_a_model", "arm_a_version", "arm_b_key", "arm_b_model", "arm_b_version")


@dataclass(frozen=True)
class InterleavingRelations:
    """Where the interleaving events are, as relations usable in FROM (tables, table functions or selects)."""

    interleaved: exp.Expr
    item_outcomes: exp.Expr


def _of_experiment(relations: InterleavingRelations, experiment_key: str) -> exp.Select:
    is_experiment = exp.EQ(this=_col("experiment"), expression=_lit(experiment_key))
    return (
        exp.select("*", copy=False)
        .from_(_from(relations.interleaved), copy=False)
        .where(is_experiment, copy=False)
    )


def arms_query(
    relations: InterleavingRelations, experiment_key: str, dialect: str, window: AnalysisWindow = ALL_TIME
) -> str:
    """The arm pairs of the experiment's exposures in ``window`` (rule 6 of ``analytics.interleaving``): arms,
    distinct exposures, first and last time."""
    arms = [_col(c) for c in ARM_COLUMNS]
    select = (
        exp.select(
            *arms,
            exp.alias_(exp.Count(this=exp.Distinct(expressions=[_col("event_id")])), "exposures"),
            exp.alias_(exp.Min(this=_col("ts")), "first_ms"),
            exp.alias_(exp.Max(this=_col("ts")), "last_ms"),
            copy=False,
        )
        .from_(_in_window(relations, experiment_key, window).subquery("x"), copy=False)
        .group_by(*[a.copy() for a in arms], copy=False)
        .order_by(exp.Ordered(this=_col("exposures"), desc=True), _col("first_ms"), *[a.copy() for a in arms],
                  copy=False)
    )  # fmt: skip
    return select.sql(dialect=DIALECTS[dialect])


def experiments_query(relations: InterleavingRelations, dialect: str) -> str:
    """The experiment keys with an interleaved exposure, sorted: those whose ``arms_query`` over all time has
    a row, in one query (the dashboard's list asked per experiment)."""
    select = (
        exp.select(_col("experiment"), copy=False)
        .from_(_from(relations.interleaved), copy=False)
        .group_by(_col("experiment"), copy=False)
        .order_by(_col("experiment"), copy=False)
    )
    return select.sql(dialect=DIALECTS[dialect])


def decode_arms(rows: Sequence[Sequence[Any]]) -> list[ArmsSeen]:
    """``arms_query``'s rows as ``ArmsSeen``."""
    return [ArmsSeen(Arm(*row[0:3]), Arm(*row[3:6]), int(row[6]), int(row[7]), int(row[8])) for row in rows]


def _before_end(window: AnalysisWindow, table: str | None = None) -> exp.Expr | None:
    """``ts < end`` (None: the window has no end); ``table`` qualifies ``ts`` where an alias shadows it."""
    return None if window.end_ms is None else exp.LT(this=_col("ts", table), expression=_lit(window.end_ms))


def _in_window(relations: InterleavingRelations, experiment_key: str, window: AnalysisWindow) -> exp.Select:
    """The experiment's exposures that rule 5 keeps: before the end, of the users whose first interleaved
    exposure, ever, is at or after the start (shared by the credit and the arm pairs)."""
    shown = _of_experiment(relations, experiment_key)
    before_end = _before_end(window)
    if before_end is not None:
        shown = shown.where(before_end, copy=False)  # ANDed with the experiment's condition
    if window.start_ms is None:  # with an end only: a user first exposed before it is in (their lists are)
        return shown
    # users whose first interleaved exposure, ever, is before the start are out (it is before the end too)
    early = (
        exp.select(_col("user_id"), copy=False)
        .from_(_of_experiment(relations, experiment_key).subquery("e"), copy=False)
        .where(exp.LT(this=_col("ts"), expression=_lit(window.start_ms)), copy=False)
    )
    return shown.where(exp.not_(_col("user_id").isin(query=early)), copy=False)


def _requests(relations: InterleavingRelations, experiment_key: str, window: AnalysisWindow) -> exp.Select:
    """Per (user, request): the lists of its first exposure and that time, in the window (see the module)."""
    earliest = exp.Tuple(expressions=[_col("ts"), _col("event_id")])
    return (
        exp.select(
            _col("user_id"),
            _col("request_id"),
            exp.alias_(exp.ArgMin(this=_col("item_ids"), expression=earliest), "item_ids"),
            exp.alias_(exp.ArgMin(this=_col("teams"), expression=earliest.copy()), "teams"),
            exp.alias_(exp.Min(this=_col("ts")), "first_ms"),
            copy=False,
        )
        .from_(_in_window(relations, experiment_key, window).subquery("x"), copy=False)
        .group_by(_col("user_id"), _col("request_id"), copy=False)
    )


def _clicked(relations: InterleavingRelations, click_metric: str, window: AnalysisWindow) -> exp.Select:
    keys = [_col("user_id"), _col("request_id"), _col("item_id")]
    # ``o.ts``: ClickHouse reads a bare ``ts`` in WHERE as the output alias ``MIN(ts) AS ts``
    conditions = [exp.EQ(this=_col("metric"), expression=_lit(click_metric)), _before_end(window, "o")]
    return (
        exp.select(*keys, exp.alias_(exp.Min(this=_col("ts")), "ts"), copy=False)
        .from_(_from(relations.item_outcomes, "o"), copy=False)
        .where(exp.and_(*(c for c in conditions if c is not None)), copy=False)
        .group_by(*[k.copy() for k in keys], copy=False)
    )


def _credits(cuts: Sequence[int | None]) -> exp.Select:
    r, c = "r", "c"
    position = ListPosition(this=_col("item_ids", r), expression=_col("item_id", c))
    counts_from = exp.Greatest(this=_col("ts", c), expressions=[_col("first_ms", r)])
    same_request = exp.and_(
        exp.EQ(this=_col("user_id", c), expression=_col("user_id", r)),
        exp.EQ(this=_col("request_id", c), expression=_col("request_id", r)),
    )
    return (
        exp.select(
            exp.alias_(_col("user_id", r), "user_id"),
            exp.alias_(ListItem(this=_col("teams", r), expression=position), "team"),
            exp.alias_(sql._first_cut_at_or_after(counts_from, cuts), "at"),
            copy=False,
        )
        .from_(_from(exp.to_table("clicked"), c), copy=False)
        .join(_from(exp.to_table("requests"), r), on=same_request, copy=False)
        .where(exp.GT(this=position.copy(), expression=_lit(0)), copy=False)
    )


def _state(cuts: Sequence[int | None]) -> exp.Select:
    entries = (
        exp.select(
            _col("user_id"),
            exp.alias_(_lit(2), "team"),  # no team: the row that puts the user in from its first cut
            exp.alias_(sql._first_cut_at_or_after(exp.Min(this=_col("first_ms")), cuts), "at"),
            copy=False,
        )
        .from_("requests", copy=False)
        .group_by(_col("user_id"), copy=False)
    )
    rows = exp.union(
        exp.select("user_id", "team", "at", copy=False).from_("credits"), entries, distinct=False
    )

    def credits_of(team: int) -> exp.Expr:  # signed: ClickHouse sums into UInt64, and d = b - a
        count = _sum_if(exp.EQ(this=_col("team"), expression=_lit(team)), _lit(1))
        return exp.Cast(this=count, to=exp.DataType.build("bigint"))

    return (
        exp.select(
            _col("user_id"),
            _col("at"),
            exp.alias_(credits_of(0), "da"),
            exp.alias_(credits_of(1), "db"),
            copy=False,
        )
        .from_(rows.subquery("rows"), copy=False)
        .group_by(_col("user_id"), _col("at"), copy=False)
    )


def _user_cut(n_cuts: int) -> exp.Select:
    s = "s"
    return (
        exp.select(
            exp.alias_(_col("user_id", s), "user_id"),
            exp.alias_(_col("j", "cuts"), "j"),
            exp.alias_(exp.Sum(this=_col("da", s)), "a"),
            exp.alias_(exp.Sum(this=_col("db", s)), "b"),
            copy=False,
        )
        .from_(_from(exp.to_table("state"), s), copy=False)
        .join(sql._cuts_relation(n_cuts).subquery("cuts"), join_type="cross", copy=False)
        .where(exp.LTE(this=_col("at", s), expression=_col("j", "cuts")), copy=False)
        .group_by(_col("user_id", s), _col("j", "cuts"), copy=False)
    )


@dataclass(frozen=True)
class CompiledPreferences:
    """A compiled preference query and the cuts its rows are indexed by."""

    sql: str
    cuts: tuple[int | None, ...]

    def decode(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[PreferenceCounts]:
        """One ``PreferenceCounts`` per cut (all zero for a cut without users)."""
        index = {name: i for i, name in enumerate(columns)}
        out = [PreferenceCounts(0, 0, 0, 0, 0.0, 0.0) for _ in self.cuts]
        for row in rows:
            value = {name: row[i] for name, i in index.items()}
            out[int(value["j"])] = PreferenceCounts(
                n=int(value["n"]),
                wins_a=int(value["wins_a"]),
                wins_b=int(value["wins_b"]),
                ties=int(value["ties"]),
                credit_diff_sum=float(value["d"]),
                credit_diff_sum_squares=float(value["dd"]),
            )
        return out


def compile_preferences(
    relations: InterleavingRelations,
    experiment_key: str,
    cuts: Sequence[int | None],
    click_metric: str,
    dialect: str,
    window: AnalysisWindow = ALL_TIME,
) -> CompiledPreferences:
    """One query for the preference counts of ``experiment_key`` at every cut (ascending; the last may be
    None), over the users and clicks of the analysis ``window``."""
    if not cuts:
        raise ValueError("at least one cut point (None = everything)")
    bounded = [c for c in cuts if c is not None]
    if bounded != sorted(bounded) or None in cuts[:-1]:
        raise ValueError(f"cuts must ascend, with None only last: {list(cuts)}")
    a, b = _col("a"), _col("b")
    d = exp.paren(exp.Sub(this=b.copy(), expression=a.copy()), copy=False)
    final = (
        exp.select(
            _col("j"),
            exp.alias_(exp.Count(this=exp.Star()), "n"),
            exp.alias_(_sum_if(exp.GT(this=a.copy(), expression=b.copy()), _lit(1)), "wins_a"),
            exp.alias_(_sum_if(exp.GT(this=b.copy(), expression=a.copy()), _lit(1)), "wins_b"),
            exp.alias_(
                _sum_if(
                    exp.and_(exp.EQ(this=a.copy(), expression=b.copy()), exp.GT(this=a.copy(), expression=_lit(0))),
                    _lit(1),
                ),
                "ties",
            ),
            exp.alias_(exp.Sum(this=d), "d"),
            exp.alias_(exp.Sum(this=exp.Mul(this=d.copy(), expression=d.copy())), "dd"),
            copy=False,
        )
        .from_("user_cut", copy=False)
        .group_by(_col("j"), copy=False)
        .order_by(_col("j"), copy=False)
    )  # fmt: skip
    ctes = [
        ("requests", _requests(relations, experiment_key, window)),
        ("clicked", _clicked(relations, click_metric, window)),
        ("credits", _credits(cuts)),
        ("state", _state(cuts)),
        ("user_cut", _user_cut(len(cuts))),
    ]
    for name, cte in ctes:
        final = final.with_(name, as_=cte, copy=False)
    return CompiledPreferences(sql=final.sql(dialect=DIALECTS[dialect]), cuts=tuple(cuts))
