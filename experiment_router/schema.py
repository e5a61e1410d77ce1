"""Pydantic schema of experiment config files (extra="forbid": a typo is an error, not a silent default)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

from proto.limits import MAX_NAME_BYTES

Stage = Literal["retrieval", "ranking"]
STAGES: tuple[Stage, ...] = ("retrieval", "ranking")
ExperimentKind = Literal["ab", "interleaving"]
InterleavingMethod = Literal["team_draft", "balanced"]
INTERLEAVED = "interleaved"
"""Variant key of users in an interleaving experiment: they see both arms at once, merged into one list."""


def _fits_an_event(value: str) -> str:
    """Experiment and variation keys and model names travel in every exposure, whose producer refuses names
    over ``MAX_NAME_BYTES``: a longer one would lose every exposure of the experiment, so the config is
    refused instead."""
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValueError(f"is longer than {MAX_NAME_BYTES} bytes (UTF-8): exposure events carry it")
    return value


def _reads_as_written(value: str) -> str:
    """Keys and model names are matched as written by analysis configs, dashboards, SQL and the model
    repository: leading or trailing whitespace and invisible characters (controls, zero-width and other format
    characters) make a key that reads like another one differ from it, so they are refused."""
    if value != value.strip():
        raise ValueError(f"{value!r} has leading or trailing whitespace")
    hidden = next((c for c in value if unicodedata.category(c) in _INVISIBLE), None)
    if hidden is not None:
        name = unicodedata.name(hidden, "a control character")
        raise ValueError(f"{value!r} holds the invisible character U+{ord(hidden):04X} ({name})")
    return value


_INVISIBLE = ("Cc", "Cf", "Zl", "Zp")
"""Unicode categories of characters that print as nothing: controls, format characters, line separators."""

EventName = Annotated[
    str, Field(min_length=1), AfterValidator(_fits_an_event), AfterValidator(_reads_as_written)
]
"""A key or model name that exposures carry."""

# Numbers, flags and counts take their own type only: pydantic's lax mode read `coverage: true` as 1.0 (all
# users), `hash_version: true` as 1 (another hash) and `sticky: "no"` as False, so a wrong type moved users
# without a word. An int is still a number.
Number = Annotated[float, Strict()]
Flag = Annotated[bool, Strict()]
Count = Annotated[int, Strict()]


def _not_a_flag(value: Any) -> Any:
    """Literal[1, 2] takes True for 1 (True == 1): refuse booleans, as Strict() does for the others."""
    if isinstance(value, bool):
        raise ValueError(f"Input should be 1 or 2, not a boolean ({str(value).lower()})")
    return value


HashVersion = Annotated[Literal[1, 2], BeforeValidator(_not_a_flag)]


class FieldProblem(ValueError):
    """A check across fields that belongs to one of them: `at` is its path below the model, so the loader
    names that field and its line rather than the whole experiment's."""

    def __init__(self, message: str, at: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.at = at


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PayloadConfig(_Strict):
    """What a variation changes for its stage: the model version and, for ranking, the task weights."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_name: EventName
    model_version: EventName
    task_weights: dict[str, Number] | None = None

    @field_validator("model_version", mode="before")
    @classmethod
    def _version_as_string(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class VariationConfig(_Strict):
    """One arm of an experiment; give either a `weight` or an explicit bucket `range`, not both."""

    key: EventName
    name: str | None = None
    weight: Number | None = Field(default=None, ge=0.0)
    range: tuple[Number, Number] | None = None
    payload: PayloadConfig

    @field_validator("range")
    @classmethod
    def _range_inside_unit(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (0.0 <= value[0] <= value[1] <= 1.0):
            raise ValueError(f"range must satisfy 0 <= start <= end <= 1, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _weight_or_range(self) -> VariationConfig:
        if self.weight is not None and self.range is not None:
            raise FieldProblem("give either 'weight' or 'range', not both", ("range",))
        return self


class LayerConfig(_Strict):
    """A namespace: experiments in one layer own disjoint slices [start, end) of it."""

    name: str = Field(min_length=1)
    range: tuple[Number, Number] = (0.0, 1.0)

    @field_validator("range")
    @classmethod
    def _range_inside_unit(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not (0.0 <= value[0] < value[1] <= 1.0):
            raise ValueError(f"range must satisfy 0 <= start < end <= 1, got {list(value)}")
        return value


class HoldoutConfig(_Strict):
    """Users hashed into [0, coverage) are kept out of the experiments the holdout covers."""

    key: EventName | None = None  # default: "global-holdout", or the group's name
    seed: str | None = None  # default: the key
    coverage: Number = Field(ge=0.0, le=1.0)
    hash_attribute: str = "user_id"
    hash_version: HashVersion = 2


class ExperimentConfig(_Strict):
    """One experiment on one stage.

    ``kind: ab`` (the default) splits users between the variations. ``kind: interleaving`` (ranking only)
    shows every user in the experiment one list merged from its two variations (the arms) by ``method``, so
    each user compares both; the arms take no weight or range, and ``coverage`` sizes the experiment.
    """

    key: EventName
    name: str | None = None
    kind: ExperimentKind = "ab"
    method: InterleavingMethod = "team_draft"
    stage: Stage
    status: Literal["draft", "running", "stopped"] = "draft"
    seed: str | None = None
    hash_attribute: str = "user_id"
    fallback_attribute: str | None = None
    hash_version: HashVersion = 2
    coverage: Number = Field(default=1.0, ge=0.0, le=1.0)
    start: datetime | None = None
    end: datetime | None = None
    condition: dict[str, Any] | None = None
    layer: LayerConfig | None = None
    holdout: str | None = None
    sticky: Flag = True
    bucket_version: Count = Field(default=0, ge=0)
    min_bucket_version: Count = Field(default=0, ge=0)
    forced: dict[str, list[str]] = Field(default_factory=dict)
    variations: list[VariationConfig] = Field(min_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        weights = [v.weight for v in self.variations]
        ranges = [v.range for v in self.variations]
        if any(r is not None for r in ranges) and None in ranges:
            at = ("variations", ranges.index(None))
            raise FieldProblem("either every variation has a 'range' or none has", at)
        if any(w is not None for w in weights) and None in weights:
            at = ("variations", weights.index(None))
            raise FieldProblem("either every variation has a 'weight' or none has (equal weights)", at)
        if all(w is not None for w in weights):
            total = sum(w for w in weights if w is not None)
            if not 0.99 <= total <= 1.01:
                message = f"variation weights must sum to 1 (+-0.01), got {total:g}"
                raise FieldProblem(message, ("variations",))
        if all(r is not None for r in ranges):
            spans = sorted((r, j) for j, r in enumerate(ranges) if r is not None)
            for (a, _), (b, j) in zip(spans, spans[1:], strict=False):
                if b[0] < a[1]:
                    message = f"variation ranges {list(a)} and {list(b)} overlap"
                    raise FieldProblem(message, ("variations", j, "range"))
        if self.min_bucket_version > self.bucket_version:
            raise FieldProblem("min_bucket_version cannot exceed bucket_version", ("min_bucket_version",))
        if self.start and self.end and _utc(self.end) <= _utc(self.start):
            raise FieldProblem("end must be after start", ("end",))
        return self


def _utc(moment: datetime) -> datetime:
    """A config time as UTC: a time without a zone is UTC (so a naive start compares with an aware end)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class RouterConfig(_Strict):
    """A whole experiment file."""

    version: Literal[1] = 1
    defaults: dict[Stage, PayloadConfig]
    holdout: HoldoutConfig | None = None
    holdout_groups: dict[str, HoldoutConfig] = Field(default_factory=dict)
    saved_groups: dict[str, list[Any]] = Field(default_factory=dict)
    experiments: list[ExperimentConfig] = Field(default_factory=list)

    @field_validator("defaults")
    @classmethod
    def _every_stage(cls, value: dict[Stage, PayloadConfig]) -> dict[Stage, PayloadConfig]:
        missing = [s for s in STAGES if s not in value]
        if missing:
            raise ValueError(f"a default payload is required for every stage; missing: {missing}")
        return value
