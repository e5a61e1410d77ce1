"""The Router: compiled experiments that assign users to variations and payloads on the request path.

Config models are compiled once into plain tuples (bucket ranges, hash-seed prefixes, code units) so the
per-request path touches no pydantic object and allocates no result: every possible outcome of an
experiment is a prebuilt, immutable Assignment.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import numpy as np

from experiment_router.bulk import UnitBatch, choose_bulk, hash_bulk
from experiment_router.conditions import compile_condition, eval_condition
from experiment_router.evaluation import EvalContext, ExperimentSpec, run_experiment, unit_string
from experiment_router.hashing import (
    FNV_OFFSET_BASIS,
    LOW_DIGIT_UNITS,
    BucketRange,
    bucket_ranges,
    code_units,
    decimal_high_states,
    fnv1a32_decimal,
    fnv1a32_update,
    hash_unit,
)
from experiment_router.loader import ModelExists, RankingTasks, load_config
from experiment_router.schema import (
    INTERLEAVED,
    STAGES,
    ExperimentConfig,
    HoldoutConfig,
    PayloadConfig,
    RouterConfig,
)
from experiment_router.sticky import StickyBucketStore

_MASK32 = 0xFFFFFFFF
_PRIME = 0x01000193
_HIGH_STATES = decimal_high_states()  # built at import (about 0.3 s), never on a request


@dataclass(frozen=True, slots=True)
class Payload:
    """The model a stage uses for a user, and for ranking the weights merging per-task scores."""

    model_name: str
    model_version: str
    task_weights: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # read-only


@dataclass(frozen=True, slots=True)
class Arm:
    """One side of an interleaving experiment: its variation key and the ranking it serves."""

    key: str
    payload: Payload


@dataclass(frozen=True, slots=True)
class Interleaving:
    """What a user in an interleaving experiment is served: both arms' rankings merged by ``method``."""

    method: str
    arms: tuple[Arm, Arm]


class _Staged(Protocol):
    @property
    def stage(self) -> str: ...
    @property
    def in_experiment(self) -> bool: ...


StagedT = TypeVar("StagedT", bound=_Staged)


def serving_assignments(assignments: Iterable[StagedT]) -> list[StagedT]:
    """Per stage, the first assignment the user is in: the experiment whose payload serves that stage. The
    servers report and log only these: should a user ever be in two experiments of a stage (configs refuse the
    ways known), the later one would be credited with a list its variant did not choose."""
    serving: list[StagedT] = []
    stages: set[str] = set()
    for a in assignments:
        if a.in_experiment and a.stage not in stages:
            stages.add(a.stage)
            serving.append(a)
    return serving


@dataclass(frozen=True, slots=True)
class Assignment:
    """One experiment's decision for one user.

    `should_log` is GrowthBook's `in_experiment and hash_used`: forced (QA) users and users outside the
    experiment get the decision but no exposure event. A user inside an interleaving experiment gets
    variant key ``"interleaved"``, variation id 0 (its one bucket, as in `assign_many`), the first arm's
    payload (what `payloads` reports) and `interleaving`, which names both arms; every other assignment
    (a QA user forced into one arm included) has `interleaving` None.
    """

    experiment_key: str
    variant_key: str | None
    variation_id: int
    stage: str
    layer: str | None
    in_experiment: bool
    should_log: bool
    payload: Payload
    reason: str
    interleaving: Interleaving | None = None


def _payload(config: PayloadConfig, fallback: Payload | None = None) -> Payload:
    weights = config.task_weights
    if weights is None and fallback is not None:
        weights = dict(fallback.task_weights)
    return Payload(config.model_name, config.model_version, MappingProxyType(dict(weights or {})))


def _bucket(
    state: int,
    units: bytes | Sequence[int],
    version: int,
    seed_prefix: int,
    seed_units: bytes | Sequence[int],
) -> float:
    """GrowthBook hash of a unit, from its FNV `state` (v1: value + seed) or the seed's prefix (v2: seed + value).

    The one hot loop of the router, hence literals (constant loads) and the decimal table for v2's second round.
    """
    if version == 1:
        h = state
        for u in seed_units:
            h = ((h ^ u) * 0x01000193) & 0xFFFFFFFF
        return (h % 1000) / 1000
    h = seed_prefix
    for u in units:
        h = ((h ^ u) * 0x01000193) & 0xFFFFFFFF
    if h < 10000:
        return (fnv1a32_decimal(h) % 10000) / 10000
    h2 = _HIGH_STATES[h // 10000]  # str(h) = str(h // 10**4) + its last four digits, zero-padded
    for u in LOW_DIGIT_UNITS[h % 10000]:
        h2 = ((h2 ^ u) * 0x01000193) & 0xFFFFFFFF
    return (h2 % 10000) / 10000


def _unix(moment: datetime | None) -> float | None:
    """Unix time of a config timestamp; a time without a zone is read as UTC."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class _Hasher:
    """Per-request memo of each hash attribute's code units and FNV state (shared by all experiments)."""

    __slots__ = ("attributes", "memo", "layers")

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        self.attributes = attributes
        self.memo: dict[str, tuple[str | None, bytes | Sequence[int], int]] = {}
        self.layers: dict[tuple[str, str], float] = {}

    def layer_position(self, attribute: str, layer: str, ns_units: bytes | Sequence[int]) -> float:
        """The unit's namespace hash in `layer` (v1, seed "__" + layer), computed once per layer."""
        key = (attribute, layer)
        n = self.layers.get(key)
        if n is None:
            h = self.unit(attribute)[2]
            for u in ns_units:
                h = ((h ^ u) * _PRIME) & _MASK32
            n = self.layers[key] = (h % 1000) / 1000
        return n

    def unit(self, attribute: str) -> tuple[str | None, bytes | Sequence[int], int]:
        """(value string or None when there is none, its UTF-16 code units, FNV state after hashing them)."""
        got = self.memo.get(attribute)
        if got is None:
            value = unit_string(self.attributes.get(attribute))
            units = code_units(value or "")
            got = (value, units, fnv1a32_update(FNV_OFFSET_BASIS, units))
            self.memo[attribute] = got
        return got

    def bucket(
        self, attribute: str, seed_prefix: int, seed_units: bytes | Sequence[int], version: int
    ) -> float | None:
        """Hash of (seed, value) in [0, 1) as GrowthBook's hash v1/v2, or None when there is no value."""
        value, units, state = self.unit(attribute)
        if value is None:
            return None
        return _bucket(state, units, version, seed_prefix, seed_units)


@dataclass(frozen=True)
class _Holdout:
    key: str
    seed: str
    attribute: str
    version: int
    coverage: float
    prefix: int
    seed_units: bytes | Sequence[int]

    @classmethod
    def compile(cls, config: HoldoutConfig, default_key: str) -> _Holdout:
        key = config.key or default_key
        seed = config.seed or key
        units = code_units(seed)
        return cls(key, seed, config.hash_attribute, config.hash_version, config.coverage,
                   fnv1a32_update(FNV_OFFSET_BASIS, units), units)  # fmt: skip

    def holds(self, hasher: _Hasher) -> bool:
        n = hasher.bucket(self.attribute, self.prefix, self.seed_units, self.version)
        return n is not None and n < self.coverage


class _Compiled:
    """One experiment compiled for the hot path, plus its GrowthBook spec for the sticky (slow) path."""

    def __init__(
        self,
        exp: ExperimentConfig,
        defaults: Mapping[str, Payload],
        holdout: _Holdout | None,
        global_holdout: str | None,
        forced_in_stage: Mapping[str, str],
    ) -> None:
        self.sticky = exp.sticky
        self.key = exp.key
        self.stage = exp.stage
        self.layer = exp.layer.name if exp.layer else None
        self.attribute = exp.hash_attribute
        self.version = exp.hash_version
        seed = self.seed = exp.seed or exp.key
        self.seed_units = code_units(seed)
        self.seed_prefix = fnv1a32_update(FNV_OFFSET_BASIS, self.seed_units)
        self.ns_units = code_units("__" + self.layer) if self.layer else b""
        self.ns_range = exp.layer.range if exp.layer else (0.0, 1.0)
        self.condition = exp.condition
        self.condition_fn = compile_condition(exp.condition) if exp.condition is not None else None
        self.start = _unix(exp.start)
        self.end = _unix(exp.end)
        # The schema allows every variation a range (or a weight) or none of them.
        explicit = [v.range for v in exp.variations if v.range is not None]
        weights = [v.weight for v in exp.variations if v.weight is not None]
        self.ranges: tuple[BucketRange, ...] = tuple(
            explicit or bucket_ranges(len(exp.variations), exp.coverage, weights or None)
        )
        default = defaults[exp.stage]
        payloads = [_payload(v.payload, default) for v in exp.variations]
        keys = [v.key for v in exp.variations]

        def outside(reason: str) -> Assignment:
            return Assignment(self.key, None, -1, self.stage, self.layer, False, False, default, reason)

        self.in_variant = tuple(
            Assignment(self.key, k, i, self.stage, self.layer, True, True, p, f"in variant {k!r}")
            for i, (k, p) in enumerate(zip(keys, payloads, strict=True))
        )
        self.sticky_variant = tuple(
            Assignment(
                self.key, k, i, self.stage, self.layer, True, True, p, f"in variant {k!r} (sticky bucket)"
            )
            for i, (k, p) in enumerate(zip(keys, payloads, strict=True))
        )
        forced_by_key = {
            k: Assignment(
                self.key, k, i, self.stage, self.layer, True, False, p, f"forced into {k!r} (QA allowlist)"
            )
            for i, (k, p) in enumerate(zip(keys, payloads, strict=True))
        }
        if exp.kind == "interleaving":
            # One bucket, [0, coverage): in (both arms, merged) or out. No variant to stick to: never sticky.
            self.sticky = False
            self.ranges = tuple(bucket_ranges(1, exp.coverage, None))
            arms = Interleaving(exp.method, (Arm(keys[0], payloads[0]), Arm(keys[1], payloads[1])))
            reason = f"interleaved: {keys[0]!r} and {keys[1]!r} merged by {exp.method}"
            self.in_variant = (
                Assignment(
                    self.key, INTERLEAVED, 0, self.stage, self.layer, True, True, payloads[0], reason, arms
                ),
            )
            forced_by_key[INTERLEAVED] = replace(
                self.in_variant[0], should_log=False, reason=f"forced into {INTERLEAVED!r} (QA allowlist)"
            )
        # A user forced into another experiment of this stage is served that one's payload: keep them out
        # of this one, or it would log an exposure for a variant they never saw (same lookup, no cost).
        elsewhere = {
            other: outside(f"forced into experiment {other!r} of stage {self.stage!r} (QA allowlist)")
            for other in set(forced_in_stage.values()) - {self.key}
        }
        self.forced = {user: elsewhere[k] for user, k in forced_in_stage.items() if k != self.key}
        self.forced.update({user: forced_by_key[k] for k, users in exp.forced.items() for user in users})
        self.status_outcome = {"draft": outside("draft"), "stopped": outside("stopped")}.get(exp.status)
        self.not_started = outside("not started yet")
        self.ended = outside("ended")
        # the experiment's holdout group and the answer for a user it holds
        self.holdout = (holdout, outside(f"in holdout group {holdout.key!r}")) if holdout else None
        self.global_held = outside(f"in global holdout {global_holdout!r}")
        self.no_unit = outside(f"no value for hash attribute {self.attribute!r}")
        self.outside_layer = outside(f"outside its slice {list(self.ns_range)} of layer {self.layer!r}")
        self.not_targeted = outside("not targeted (condition false)")
        self.outside_coverage = outside("outside coverage")
        self.sticky_blocked = outside("sticky bucket from an older bucket version blocks re-enrolment")
        self.spec = ExperimentSpec(
            key=exp.key,
            variations=keys,
            ranges=self.ranges,
            condition=exp.condition,
            namespace=(self.layer, *self.ns_range) if self.layer else None,
            hash_attribute=exp.hash_attribute,
            fallback_attribute=exp.fallback_attribute,
            hash_version=exp.hash_version,
            seed=seed,
            meta=[{"key": k} for k in keys],
            status=exp.status,
            bucket_version=exp.bucket_version,
            min_bucket_version=exp.min_bucket_version,
            disable_sticky_bucketing=not exp.sticky,
        )

    def assign(
        self,
        user_id: str,
        hasher: _Hasher,
        now: float,
        global_held: bool,
        saved_groups: Mapping[str, Any],
        sticky: StickyBucketStore | None,
    ) -> Assignment:
        forced = self.forced.get(user_id)
        if forced is not None:
            return forced
        if self.status_outcome is not None:
            return self.status_outcome
        if self.start is not None and now < self.start:
            return self.not_started
        if self.end is not None and now >= self.end:
            return self.ended
        if global_held:
            return self.global_held
        if self.holdout is not None and self.holdout[0].holds(hasher):
            return self.holdout[1]
        if sticky is not None and self.sticky:
            return self._assign_sticky(hasher, saved_groups, sticky)
        return self._bucket(hasher, saved_groups)

    def _bucket(self, hasher: _Hasher, saved_groups: Mapping[str, Any]) -> Assignment:
        """Layer slice, targeting and variation ranges: the stateless GrowthBook path."""
        value, units, state = hasher.unit(self.attribute)
        if value is None:
            return self.no_unit
        if self.layer is not None:
            n = hasher.layer_position(self.attribute, self.layer, self.ns_units)
            if not self.ns_range[0] <= n < self.ns_range[1]:
                return self.outside_layer
        if self.condition_fn is not None and not self.condition_fn(hasher.attributes, saved_groups):
            return self.not_targeted
        n = _bucket(state, units, self.version, self.seed_prefix, self.seed_units)
        for i, r in enumerate(self.ranges):
            if r[0] <= n < r[1]:
                return self.in_variant[i]
        return self.outside_coverage

    def _assign_sticky(
        self, hasher: _Hasher, saved_groups: Mapping[str, Any], store: StickyBucketStore
    ) -> Assignment:
        """Slow path through the reference evaluator so sticky semantics are GrowthBook's exactly."""
        ctx = EvalContext(attributes=hasher.attributes, saved_groups=saved_groups, sticky_store=store)
        res = run_experiment(self.spec, ctx)
        if res.in_experiment:
            return (self.sticky_variant if res.sticky_bucket_used else self.in_variant)[res.variation_id]
        if res.sticky_bucket_used:
            return self.sticky_blocked
        stateless = self._bucket(hasher, saved_groups)  # same rules without the store: says why not
        return self.outside_coverage if stateless.in_experiment else stateless


class Router:
    """Assigns users to experiments; immutable once built, swapped whole on hot reload."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        source: str | None = None,
        sticky_store: StickyBucketStore | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.sticky_store = sticky_store
        self._defaults: dict[str, Payload] = {s: _payload(config.defaults[s]) for s in STAGES}
        self._global = _Holdout.compile(config.holdout, "global-holdout") if config.holdout else None
        groups = {k: _Holdout.compile(v, k) for k, v in config.holdout_groups.items()}
        self._saved_groups = {k: list(v) for k, v in config.saved_groups.items()}
        global_key = self._global.key if self._global else None
        forced_in: dict[str, dict[str, str]] = {s: {} for s in STAGES}  # stage: user -> first forcing exp
        for exp in config.experiments:
            for users in exp.forced.values():
                for user in users:
                    forced_in[exp.stage].setdefault(user, exp.key)
        self._experiments = tuple(
            _Compiled(
                exp,
                self._defaults,
                groups.get(exp.holdout) if exp.holdout else None,
                global_key,
                forced_in[exp.stage],
            )
            for exp in config.experiments
        )
        self._uses_clock = any(e.start is not None or e.end is not None for e in self._experiments)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        model_exists: ModelExists | None = None,
        ranking_tasks: RankingTasks | None = None,
        sticky_store: StickyBucketStore | None = None,
        text: str | None = None,
    ) -> Router:
        """Load, validate and compile a config file (raises ConfigError naming file, key path, line)."""
        config = load_config(path, model_exists=model_exists, ranking_tasks=ranking_tasks, text=text)
        return cls(config, source=str(path), sticky_store=sticky_store)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **kwargs: Any) -> Router:
        """Validate and compile an already parsed config."""
        model_exists = kwargs.pop("model_exists", None)
        ranking_tasks = kwargs.pop("ranking_tasks", None)
        return cls(load_config(data, model_exists=model_exists, ranking_tasks=ranking_tasks), **kwargs)

    @property
    def experiment_keys(self) -> tuple[str, ...]:
        """Keys of every experiment in file order."""
        return tuple(e.key for e in self._experiments)

    def assign(
        self, user_id: str, attributes: Mapping[str, Any] | None = None, *, now: float | None = None
    ) -> list[Assignment]:
        """One Assignment per experiment of the config, in file order.

        Args:
            user_id: the unit id, available to conditions and hashing as attribute `user_id`.
            attributes: other user attributes (country, device_id, ...).
            now: Unix time for start/end windows; read from the clock only when an experiment has one.
        """
        attrs = {**attributes, "user_id": user_id} if attributes else {"user_id": user_id}
        hasher = _Hasher(attrs)
        if now is None:
            now = time.time() if self._uses_clock else 0.0
        held = self._global.holds(hasher) if self._global is not None else False
        groups, sticky = self._saved_groups, self.sticky_store
        return [e.assign(user_id, hasher, now, held, groups, sticky) for e in self._experiments]

    def assign_many(
        self, user_ids: Sequence[str], attributes: Mapping[str, Any] | None = None, *, now: float | None = None
    ) -> dict[str, np.ndarray]:
        """Vectorised assignment of many users sharing `attributes`: variation index per experiment, -1 outside.

        Mirrors `assign` without sticky buckets (forced allowlists, status, start/end at `now`, read from the
        clock when None as `assign` does, holdouts, layer slice, condition, coverage); a condition reading
        `user_id` is evaluated per user. Ids are hashed exactly as `assign` hashes them: NULs, unicode and very
        long ids included.
        """
        if now is None:  # the epoch (0.0) put every user outside an experiment with a start date
            now = time.time() if self._uses_clock else 0.0
        batch = UnitBatch(user_ids)
        size = len(batch)
        attrs = {k: v for k, v in (attributes or {}).items() if k != "user_id"}
        cache: dict[tuple[str, str, int], np.ndarray] = {}

        def hashed(attribute: str, seed: str, version: int) -> np.ndarray:
            key = (attribute, seed, version)
            if key not in cache:
                if attribute == "user_id":
                    cache[key] = hash_bulk(seed, batch, version)
                else:
                    value = unit_string(attrs.get(attribute))
                    single = hash_unit(seed, value, version) if value is not None else None
                    cache[key] = np.full(size, np.nan if single is None else single)
            return cache[key]

        def held(holdout: _Holdout) -> np.ndarray:
            return hashed(holdout.attribute, holdout.seed, holdout.version) < holdout.coverage

        global_held = held(self._global) if self._global is not None else np.zeros(size, dtype=bool)
        forced_users = {user for exp in self._experiments for user in exp.forced}
        # exact matches in Python: numpy compares strings without their trailing NULs ("\x00" == "")
        forced_hits = [(i, u) for i, u in enumerate(batch.ids) if u in forced_users] if forced_users else []
        out: dict[str, np.ndarray] = {}
        for exp in self._experiments:
            result = np.full(size, -1, dtype=np.int64)
            window_ok = (exp.start is None or now >= exp.start) and (exp.end is None or now < exp.end)
            if exp.status_outcome is None and window_ok:
                eligible = ~global_held
                if exp.holdout is not None:
                    eligible &= ~held(exp.holdout[0])
                if exp.layer is not None:
                    pos = hashed(exp.attribute, "__" + exp.layer, 1)
                    eligible &= (pos >= exp.ns_range[0]) & (pos < exp.ns_range[1])
                if exp.condition is not None:
                    eligible &= self._condition_mask(exp.condition, attrs, batch.ids)
                chosen = choose_bulk(
                    np.nan_to_num(hashed(exp.attribute, exp.seed, exp.version), nan=2.0), exp.ranges
                )
                result = np.where(eligible, chosen, -1)
            for i, user in forced_hits:
                forced = exp.forced.get(user)
                if forced is not None:
                    result[i] = forced.variation_id
            out[exp.key] = result
        return out

    def _condition_mask(
        self, condition: Mapping[str, Any], attrs: Mapping[str, Any], ids: list[str]
    ) -> np.ndarray:
        if "user_id" in json.dumps(condition):
            return np.fromiter(
                (eval_condition({**attrs, "user_id": u}, condition, self._saved_groups) for u in ids),
                dtype=bool,
                count=len(ids),
            )
        return np.full(len(ids), eval_condition({**attrs, "user_id": ""}, condition, self._saved_groups))

    def ranges_of(self, experiment_key: str) -> tuple[tuple[float, float], ...]:
        """The bucket range of each variation of an experiment (coverage applied)."""
        for exp in self._experiments:
            if exp.key == experiment_key:
                return exp.ranges
        raise KeyError(experiment_key)

    def in_global_holdout(self, user_id: str, attributes: Mapping[str, Any] | None = None) -> bool:
        """Whether the user is in the global holdout (always False without one)."""
        if self._global is None:
            return False
        return self._global.holds(_Hasher({**(attributes or {}), "user_id": user_id}))

    def payloads(self, assignments: Sequence[Assignment]) -> dict[str, Payload]:
        """The payload per stage: that of its serving assignment (``serving_assignments``), else the default.

        For an interleaving experiment this is its first arm; the assignment's ``interleaving`` has both.
        """
        return dict(self._defaults) | {a.stage: a.payload for a in serving_assignments(assignments)}

    def model_refs(self) -> set[tuple[str, str, str]]:
        """Every (stage, model name, version) `assign` can serve (what to preload): the defaults', a running
        experiment's, and those of the variations a draft or stopped experiment forces QA users into."""
        refs = {(s, p.model_name, p.model_version) for s, p in self._defaults.items()}
        for exp in self.config.experiments:
            merged = bool(exp.forced.get(INTERLEAVED))  # users forced into the merged list see both arms
            refs.update(
                (exp.stage, v.payload.model_name, v.payload.model_version)
                for v in exp.variations
                if exp.status == "running" or merged or exp.forced.get(v.key)
            )
        return refs

    def default_for(self, stage: str) -> Payload:
        """What users outside every experiment of `stage` get."""
        return self._defaults[stage]
