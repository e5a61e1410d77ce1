"""Metric definitions (YAML, validated) and their aggregation from per-user rows to sufficient statistics.

A metric reads the per-user rows the event store keeps for one outcome name (``event``):
``(variant_key, value_sum, event_count, pre_value_sum)``, one row per exposed user.

- ``binomial``: share of users with at least one event (Proportion).
- ``count``: events per user (SampleMean of event_count).
- ``mean`` / ``continuous``: summed value per user (SampleMean of value_sum), optionally winsorised.
- ``ratio``: sum over users of the numerator over the sum of the denominator (Ratio, delta method).

With ``cuped: true`` the covariate is the user's pre-exposure value sum of the same event
(``pre_value_sum``), winsorised like the metric.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from analytics import AnalyticsError
from analytics.analysis_window import ALL_TIME, AnalysisWindow, iso_ms
from analytics.stats.models.settings import (
    DEFAULT_SEQUENTIAL_TUNING_PARAMETER,
    Correction,
    DifferenceType,
)
from analytics.stats.models.statistics import CupedMean, Proportion, Ratio, SampleMean, TestStatistic

if TYPE_CHECKING:
    from analytics.interleaving import ArmsSeen
    from analytics.stats.models.statistics import PreferenceCounts

logger = logging.getLogger(__name__)

MetricType = Literal["binomial", "count", "mean", "continuous", "ratio"]
UserRow = tuple[str, float, int, float]
"""(variant_key, value_sum, event_count, pre_value_sum) for one exposed user."""


class EventStore(Protocol):
    """What the analysis reads from the event store (implemented by ``analytics.store``)."""

    def experiments(self) -> list[str]: ...

    def variant_counts(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> dict[str, int]: ...

    def variant_counts_by_experiment(self) -> dict[str, dict[str, int]]: ...

    def interleaving_experiments(self) -> set[str]: ...

    def user_metric_values(
        self,
        experiment_key: str,
        metric: str,
        until_ms: int | None = None,
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> Iterator[UserRow]: ...

    def metric_statistics(
        self,
        experiment_key: str,
        metrics: Sequence[MetricDefinition],
        cuts: Sequence[int | None],
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> list[list[dict[str, TestStatistic]]]: ...

    def exposure_timeline(
        self, experiment_key: str, bucket_ms: int, *, window: AnalysisWindow = ALL_TIME
    ) -> list[tuple[int, str, int]]: ...

    def time_range(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> tuple[int, int]: ...

    def interleaving_arms(
        self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME
    ) -> list[ArmsSeen]: ...

    def preference_counts(
        self,
        experiment_key: str,
        cuts: Sequence[int | None],
        click_metric: str = "click",
        *,
        window: AnalysisWindow = ALL_TIME,
    ) -> list[PreferenceCounts]: ...


class MetricConfigError(AnalyticsError, ValueError):
    """An analysis config that does not validate; the message names file, line and key path."""


class StoreContractError(AnalyticsError, RuntimeError):
    """The store returned rows that break its contract (e.g. ratio rows not in the same user order)."""


class _KeyPathError(ValueError):
    """A rule broken deeper than the model that checks it: ``path`` (relative to that model) lets
    ``load_analysis_config`` report the line and key path of the offending value, not of the model."""

    def __init__(self, message: str, path: tuple[int | str, ...]) -> None:
        super().__init__(message)
        self.path = path


class _Strict(BaseModel):
    # NaN and inf are refused: an infinite weight or tuning parameter would only fail later, in the analysis
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Winsorization(_Strict):
    """Caps applied to per-user values before aggregation: a quantile over all users, or a fixed value."""

    lower_quantile: float | None = Field(default=None, ge=0.0, le=1.0)
    upper_quantile: float | None = Field(default=None, ge=0.0, le=1.0)
    lower_value: float | None = None
    upper_value: float | None = None

    @model_validator(mode="after")
    def _one_cap_per_side(self) -> Winsorization:
        if self.lower_quantile is not None and self.lower_value is not None:
            raise ValueError("give lower_quantile or lower_value, not both")
        if self.upper_quantile is not None and self.upper_value is not None:
            raise ValueError("give upper_quantile or upper_value, not both")
        if all(
            v is None for v in (self.lower_quantile, self.upper_quantile, self.lower_value, self.upper_value)
        ):
            raise ValueError("set at least one of lower_quantile, upper_quantile, lower_value, upper_value")
        for kind in ("quantile", "value"):  # a lower cap above the upper one clips every value to one number
            lower, upper = getattr(self, f"lower_{kind}"), getattr(self, f"upper_{kind}")
            if lower is not None and upper is not None and lower > upper:
                raise _KeyPathError(f"lower_{kind} {lower} is above upper_{kind} {upper}", (f"lower_{kind}",))
        return self

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Clip ``values``; quantiles are taken over all users of all variants together."""
        lower = self.lower_value
        upper = self.upper_value
        if self.lower_quantile is not None and values.size:
            lower = float(np.quantile(values, self.lower_quantile))
        if self.upper_quantile is not None and values.size:
            upper = float(np.quantile(values, self.upper_quantile))
        return np.clip(values, lower, upper) if (lower is not None or upper is not None) else values


class MetricDefinition(_Strict):
    """One metric of the analysis config."""

    name: str = Field(min_length=1)
    type: MetricType
    description: str = ""
    event: str | None = Field(default=None, min_length=1)  # no outcome has an empty name: it would read none
    numerator: str | None = Field(default=None, min_length=1)
    denominator: str | None = Field(default=None, min_length=1)
    aggregation: Literal["sum", "count"] = "sum"
    winsorize: Winsorization | None = None
    cuped: bool = False
    guardrail: bool = False
    inverse: bool = False

    @model_validator(mode="after")
    def _check_type_fields(self) -> MetricDefinition:
        if self.type == "ratio":
            if self.numerator is None or self.denominator is None:
                raise ValueError("ratio metrics need numerator and denominator (event names)")
            if self.event is not None:
                raise ValueError("ratio metrics take numerator/denominator, not event")
            if self.cuped:
                raise ValueError("cuped is not supported for ratio metrics")
            if self.winsorize is not None:
                raise ValueError("winsorize is not supported for ratio metrics")
        else:
            if self.event is None:
                raise ValueError(f"{self.type} metrics need event (the outcome name)")
            if self.numerator is not None or self.denominator is not None:
                raise ValueError("numerator/denominator only apply to ratio metrics")
        if self.type == "binomial" and self.winsorize is not None:
            raise ValueError("winsorize does not apply to binomial metrics")
        return self


class ExperimentSettings(_Strict):
    """Per-experiment analysis settings; every field is optional.

    ``weights`` is the split of users by first exposure that the SRM check expects. An experiment whose
    router weights changed while it ran has no single split (the SRM check flags it and the lift mixes two
    allocations); such a change belongs under a new experiment key, analysed on its own, or, when it happened
    all the same, under ``start`` / ``end``: the analysis window (``analytics.analysis_window``), given as
    ISO 8601 timestamps with a timezone or epoch milliseconds and kept as epoch milliseconds.
    """

    control: str | None = None
    weights: dict[str, float] | None = None
    status: str = "running"
    metrics: list[str] | None = None
    start: int | None = None
    end: int | None = None

    @field_validator("start", "end", mode="before")
    @classmethod
    def _epoch_ms(cls, value: object) -> int | None:
        return None if value is None else epoch_ms(value)

    @property
    def window(self) -> AnalysisWindow:
        """The analysis window (``ALL_TIME`` when neither ``start`` nor ``end`` is set)."""
        return AnalysisWindow(self.start, self.end)

    @model_validator(mode="after")
    def _positive_weights(self) -> ExperimentSettings:
        if self.weights is not None and any(w <= 0 for w in self.weights.values()):
            raise ValueError(f"weights must be > 0, got {self.weights}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise _KeyPathError(f"end {iso_ms(self.end)} is not after start {iso_ms(self.start)}", ("end",))
        if self.control is not None and self.weights is not None and self.control not in self.weights:
            # the control would get weight 0: its users count as unplanned traffic and SRM always flags
            raise _KeyPathError(
                f"control {self.control!r} is not one of the weighted variants {sorted(self.weights)}",
                ("control",),
            )
        return self


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


MAX_EPOCH_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
"""The last millisecond of year 9999: what a timestamp can say, well inside every store's 64-bit integers."""


def epoch_ms(value: object) -> int:
    """A window bound as epoch milliseconds: an integer as is, or an ISO 8601 timestamp with a timezone (a
    YAML timestamp or a string). A timestamp without one is refused: read in the server's zone it would move
    the window by hours without a word."""
    expected = (
        "an ISO 8601 timestamp with a timezone (2024-05-01T00:00:00Z) or epoch milliseconds (an integer)"
    )
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"expected {expected}, got {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"timestamp {value.isoformat()} has no timezone: add one (Z for UTC, or +02:00)")
        return (value - _EPOCH) // timedelta(milliseconds=1)  # exact (a float timestamp may round)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"epoch milliseconds must be >= 0, got {value}")
        if value > MAX_EPOCH_MS:  # 2**64 went into ClickHouse's SQL as a Float64 and failed the report there
            raise ValueError(
                f"epoch milliseconds must be at most {MAX_EPOCH_MS} (the end of year 9999), got {value}"
            )
        return value
    if isinstance(value, date):
        raise ValueError(f"date {value.isoformat()} has no time and timezone: expected {expected}")
    raise ValueError(f"expected {expected}, got {type(value).__name__} {value!r}")


class InterleavingSettings(_Strict):
    """How interleaving experiments are analysed (their tests use the config's alpha and sequential settings)."""

    click_metric: str = Field(default="click", min_length=1)
    """The outcome name whose events are clicks: credited to the arm that supplied the item they name."""


class AnalysisConfig(_Strict):
    """The analysis config file: test settings, the metrics, and optional per-experiment settings."""

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    difference_type: DifferenceType = "relative"
    correction: Correction = "holm"
    """Multiple-testing correction (``analytics.stats.multiple_testing``) over one family per report: every goal
    metric (guardrails are left out) times every treatment. Also in sequential mode: an always-valid p-value is
    valid at whatever time one stops, so Holm on them keeps the family-wise error rate at any stop; BH keeps
    the false discovery rate under independence or positive dependence, as at a fixed horizon."""
    sequential: bool = False
    sequential_tuning_parameter: float = Field(default=DEFAULT_SEQUENTIAL_TUNING_PARAMETER, gt=0.0)
    srm_threshold: float = Field(default=0.001, gt=0.0, lt=1.0)
    timeline_points: int = Field(default=12, ge=0, le=200)
    metrics: list[MetricDefinition] = Field(min_length=1)
    experiments: dict[str, ExperimentSettings] = Field(default_factory=dict)
    interleaving: InterleavingSettings = Field(default_factory=InterleavingSettings)

    @model_validator(mode="after")
    def _check_names(self) -> AnalysisConfig:
        names = [m.name for m in self.metrics]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _KeyPathError(
                    f"duplicate metric name {name!r} (also metrics.{names.index(name)})",
                    ("metrics", i, "name"),
                )
        for key, settings in self.experiments.items():
            for i, name in enumerate(settings.metrics or []):
                if name not in names:
                    raise _KeyPathError(
                        f"unknown metric {name!r}; known: {names}", ("experiments", key, "metrics", i)
                    )
        return self

    def metric(self, name: str) -> MetricDefinition:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"unknown metric {name!r}; known: {[m.name for m in self.metrics]}")

    def experiment(self, key: str) -> ExperimentSettings:
        return self.experiments.get(key, ExperimentSettings())

    def metrics_for(self, key: str) -> list[MetricDefinition]:
        selected = self.experiment(key).metrics
        return list(self.metrics) if selected is None else [self.metric(name) for name in selected]


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the deepest YAML node along a pydantic error location."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def load_analysis_config(path: str | Path) -> AnalysisConfig:
    """Read and validate an analysis config.

    Raises:
        MetricConfigError: unreadable YAML or invalid content; the message names file, line and key path
            for each problem (and the allowed keys for unknown ones).
    """
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.MarkedYAMLError as exc:  # its text spans lines and names "<unicode string>", not the file
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise MetricConfigError(f"{where}: cannot read analysis config: invalid YAML: {problem}") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MetricConfigError(f"{path}: cannot read analysis config: {exc}") from exc
    if not isinstance(data, dict):
        raise MetricConfigError(f"{path}: expected a mapping at the top level")
    duplicates = [f"{path}:{problem}" for problem in _duplicate_keys(root, (), set())]
    if duplicates:
        raise MetricConfigError("invalid analysis config:\n  " + "\n  ".join(duplicates))
    try:
        return AnalysisConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [
                part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-"))
            ]
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, _KeyPathError):
                loc += cause.path
            key = ".".join(str(p) for p in loc) or "<root>"
            line = _line_of(root, loc)
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                model = _model_at(loc[:-1], data)
                message = f"unknown key; allowed keys: {sorted(model.model_fields)}" if model else message
            problems.append(f"{path}:{line}: {key}: {message}")
        raise MetricConfigError("invalid analysis config:\n  " + "\n  ".join(problems)) from None


def _duplicate_keys(node: yaml.Node | None, loc: tuple[str, ...], seen: set[int]) -> list[str]:
    """``line: key.path: ...`` for each key given twice in one mapping: YAML keeps the last one silently, so
    a setting pasted twice (``cuped: true`` ... ``cuped: false``) would hide the first.

    ``seen`` holds the nodes already walked: an alias repeats its anchor's node, and walking it again for
    every alias would take exponential time on nested aliases.
    """
    if node is None or id(node) in seen:
        return []
    seen.add(id(node))
    problems = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[object, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name in first_line:
                where = ".".join((*loc, str(name)))
                line = key.start_mark.line + 1
                problems.append(f"{line}: {where}: duplicate key (also line {first_line[name]})")
            elif name is not None:
                first_line[name] = key.start_mark.line + 1
            problems += _duplicate_keys(value, (*loc, str(name)), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, (*loc, str(i)), seen)
    return problems


def _model_at(loc: Sequence[int | str], data: object) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` (for listing allowed keys)."""
    model: type[BaseModel] | None = AnalysisConfig
    for part in loc:
        if model is AnalysisConfig and part == "metrics":
            model = MetricDefinition
        elif model is AnalysisConfig and part == "experiments":
            model = None
        elif model is None and isinstance(part, str):
            model = ExperimentSettings
        elif model is MetricDefinition and part == "winsorize":
            model = Winsorization
        elif model is AnalysisConfig and part == "interleaving":
            model = InterleavingSettings
        elif isinstance(part, int):
            continue
        else:
            return None
    return model


def _row_columns(rows: Iterable[UserRow]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct variant keys (first-seen order), a variant code per row and the value/count/pre columns.

    One pass appending to flat lists: materialising the rows as a list of tuples first would keep a million
    GC-tracked tuples alive and make the collector rescan them, which costs several times the pass itself.
    """
    index: dict[str, int] = {}
    codes: list[int] = []
    value_sums: list[float] = []
    counts: list[float] = []
    pre_sums: list[float] = []
    code, add_value, add_count, add_pre = codes.append, value_sums.append, counts.append, pre_sums.append
    for variant, value_sum, event_count, pre_value_sum in rows:
        code(index.setdefault(variant, len(index)))
        add_value(value_sum)
        add_count(event_count)
        add_pre(pre_value_sum)
    return (
        list(index),
        np.asarray(codes, dtype=np.int64),
        np.asarray(value_sums, dtype=np.float64),
        np.asarray(counts, dtype=np.float64),
        np.asarray(pre_sums, dtype=np.float64),
    )


def _sums_by_variant(codes: np.ndarray, size: int, *columns: np.ndarray) -> list[np.ndarray]:
    return [np.bincount(codes, weights=column, minlength=size) for column in columns]


def _mean_statistics(keys: list[str], codes: np.ndarray, values: np.ndarray) -> dict[str, TestStatistic]:
    n = np.bincount(codes, minlength=len(keys))
    sums, squares = _sums_by_variant(codes, len(keys), values, values * values)
    return {k: SampleMean(int(n[i]), float(sums[i]), float(squares[i])) for i, k in enumerate(keys)}


def aggregate_rows(metric: MetricDefinition, rows: Iterable[UserRow]) -> dict[str, TestStatistic]:
    """Sufficient statistics per variant from one metric's per-user rows (not for ratio metrics)."""
    if metric.type == "ratio":
        raise ValueError("ratio metrics need two row streams: use aggregate_ratio_rows")
    keys, codes, value_sums, counts, pre_sums = _row_columns(rows)
    n = np.bincount(codes, minlength=len(keys))
    if metric.type == "binomial":
        values = (counts > 0).astype(np.float64)
    elif metric.type == "count":
        values = counts
    else:
        values = counts if metric.aggregation == "count" else value_sums
    if metric.winsorize is not None:
        values = metric.winsorize.apply(values)
        pre_sums = metric.winsorize.apply(pre_sums)
    if metric.cuped:
        sums, squares, pre, pre_squares, products = _sums_by_variant(
            codes, len(keys), values, values * values, pre_sums, pre_sums * pre_sums, values * pre_sums
        )
        return {
            k: CupedMean(
                n=int(n[i]),
                post=SampleMean(int(n[i]), float(sums[i]), float(squares[i])),
                pre=SampleMean(int(n[i]), float(pre[i]), float(pre_squares[i])),
                post_pre_sum_product=float(products[i]),
            )
            for i, k in enumerate(keys)
        }
    if metric.type == "binomial":
        (sums,) = _sums_by_variant(codes, len(keys), values)
        return {k: Proportion(int(n[i]), float(sums[i])) for i, k in enumerate(keys)}
    return _mean_statistics(keys, codes, values)


def aggregate_ratio_rows(
    metric: MetricDefinition, numerator_rows: Iterable[UserRow], denominator_rows: Iterable[UserRow]
) -> dict[str, TestStatistic]:
    """Ratio statistics per variant from the numerator's and the denominator's per-user rows.

    Raises:
        StoreContractError: the two streams are not in the same user order (different lengths or
            variants at the same position).
    """
    keys, codes, num_sums, num_counts, _ = _row_columns(numerator_rows)
    den_keys, den_codes, den_sums, den_counts, _ = _row_columns(denominator_rows)
    if den_keys != keys or not np.array_equal(codes, den_codes):
        raise StoreContractError(
            f"metric {metric.name!r}: rows of {metric.numerator!r} and {metric.denominator!r} are not in the "
            "same user order (the store must return one row per exposed user in a stable order)"
        )
    num = num_counts if metric.aggregation == "count" else num_sums
    den = den_counts if metric.aggregation == "count" else den_sums
    n = np.bincount(codes, minlength=len(keys))
    num_sum, num_sq, den_sum, den_sq, products = _sums_by_variant(
        codes, len(keys), num, num * num, den, den * den, num * den
    )
    return {
        k: Ratio(
            n=int(n[i]),
            numerator=SampleMean(int(n[i]), float(num_sum[i]), float(num_sq[i])),
            denominator=SampleMean(int(n[i]), float(den_sum[i]), float(den_sq[i])),
            num_den_sum_product=float(products[i]),
        )
        for i, k in enumerate(keys)
    }


def aggregate(
    metric: MetricDefinition,
    store: EventStore,
    experiment_key: str,
    until_ms: int | None = None,
    *,
    window: AnalysisWindow = ALL_TIME,
) -> dict[str, TestStatistic]:
    """Sufficient statistics per variant of ``metric`` in ``experiment_key`` (events up to ``until_ms``, users
    and events of the analysis ``window``)."""

    def rows(event: str | None) -> Iterator[UserRow]:
        return store.user_metric_values(experiment_key, event or "", until_ms, window=window)

    if metric.type == "ratio":
        return aggregate_ratio_rows(metric, rows(metric.numerator), rows(metric.denominator))
    return aggregate_rows(metric, rows(metric.event))
