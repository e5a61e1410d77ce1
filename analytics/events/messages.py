"""Build and encode Exposure/Outcome events from plain values, so callers need not touch protobuf.

Events travel as ``EventBatch`` records. A batch is the protobuf concatenation of its ``events`` entries, so we
serialise each event once and frame it (tag + length) when batching: no re-encoding per batch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence

from analytics.events.errors import InvalidEvent
from proto import common_pb2, events_pb2, limits

SCHEMA_VERSION = events_pb2.SCHEMA_VERSION_1
INTERLEAVING_SCHEMA_VERSION = events_pb2.SCHEMA_VERSION_2
"""Exposures of interleaving experiments (with ``teams`` and ``arms``); every other event is version 1."""
OUTCOME_SCHEMA_VERSIONS = frozenset({events_pb2.SCHEMA_VERSION_1})
"""Versions an outcome may have (no outcome is version 2)."""
KNOWN_SCHEMA_VERSIONS = OUTCOME_SCHEMA_VERSIONS | {INTERLEAVING_SCHEMA_VERSION}
"""Versions the analytics consumer reads: version 2 exposures go to the store with their items and teams (the
store credits clicks to the arms)."""
SENDABLE_SCHEMA_VERSIONS = KNOWN_SCHEMA_VERSIONS
"""Versions producers may send."""
EARLIEST_EVENT_TIME_MS = 946_684_800_000
"""2000-01-01T00:00:00Z. A reported event time before it is a unit mistake: seconds since the epoch read as
milliseconds fall in January 1970, before every exposure, and would count as pre-exposure values."""
MAX_EVENT_TIME_AHEAD_MS = 3_600_000
"""How far (1 hour) a reported event time may run ahead of the receiver's clock. Further is a mistake
(microseconds read as milliseconds fall thousands of years ahead, outside every attribution window)."""
_BATCH_EVENTS_TAG = b"\x0a"  # field 1 (events), wire type 2 (length-delimited)


def new_event_id() -> str:
    """A unique event id: 128 random bits as 32 hex characters (uuid4's entropy, a third of its cost)."""
    return os.urandom(16).hex()


def now_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def make_exposure(
    user_id: str,
    experiment_key: str,
    variant_key: str,
    *,
    request_id: str = "",
    variation_id: int = 0,
    stage: str = "ranking",
    event_time_ms: int | None = None,
    model_name: str = "",
    model_version: str = "",
    item_ids: Sequence[int] = (),
    event_id: str | None = None,
    teams: Sequence[int] = (),
    arms: Sequence[tuple[str, str, str]] = (),
) -> events_pb2.Exposure:
    """An Exposure with a fresh event id, the current schema version and (by default) the current time.

    An interleaving exposure gives ``arms`` (variation key, model name, model version of each arm) and
    ``teams`` (the arm index of each item): it gets schema version 2 and no ``model``.

    Raises:
        InvalidEvent: when user_id, experiment_key or variant_key is empty, or see ``event_problem``.
    """
    for name, value in (
        ("user_id", user_id),
        ("experiment_key", experiment_key),
        ("variant_key", variant_key),
    ):
        if not value:
            raise InvalidEvent(f"Exposure.{name} must not be empty")
    exposure = events_pb2.Exposure(
        event_id=event_id or new_event_id(),
        schema_version=INTERLEAVING_SCHEMA_VERSION if arms else SCHEMA_VERSION,
        request_id=request_id,
        user_id=user_id,
        experiment_key=experiment_key,
        variant_key=variant_key,
        variation_id=variation_id,
        stage=stage,
        event_time_ms=now_ms() if event_time_ms is None else event_time_ms,
        item_ids=item_ids,
        teams=teams,
        arms=[
            common_pb2.InterleavingArm(key=k, model=common_pb2.ModelRef(name=n, version=v))
            for k, n, v in arms
        ],
    )
    if not arms:
        exposure.model.CopyFrom(common_pb2.ModelRef(name=model_name, version=model_version))
    check_event(exposure)
    return exposure


def make_outcome(
    user_id: str,
    metric: str,
    value: float = 1.0,
    *,
    request_id: str = "",
    experiment_key: str = "",
    variant_key: str = "",
    event_time_ms: int | None = None,
    item_id: int | None = None,
    event_id: str | None = None,
) -> events_pb2.Outcome:
    """An Outcome (metric + value) with a fresh event id, the current schema version and time.

    ``item_id`` is set only when given (0 is an item like any other); an outcome without one is about no item,
    and interleaving credits it to no arm.

    Raises:
        InvalidEvent: see ``event_problem``.
    """
    outcome = events_pb2.Outcome(
        event_id=event_id or new_event_id(),
        schema_version=SCHEMA_VERSION,
        request_id=request_id,
        user_id=user_id,
        experiment_key=experiment_key,
        variant_key=variant_key,
        event_time_ms=now_ms() if event_time_ms is None else event_time_ms,
        metric=metric,
        value=float(value),
        item_id=item_id,
    )
    check_event(outcome)
    return outcome


_SHORT_ID = limits.MAX_ID_BYTES // 4
_SHORT_NAME = limits.MAX_NAME_BYTES // 4
"""Strings of at most these many characters are within the limits whatever they hold (UTF-8 takes at most 4
bytes a character): ``event_problem`` checks the limits (``_limits_problem``) only when a string is longer,
since readers check every event they read."""


def event_problem(message: events_pb2.Exposure | events_pb2.Outcome) -> tuple[str, str] | None:
    """``(field, reason)`` when the event cannot be sent (the reason never quotes the value), else None.

    Checks what every event needs: a user id (and a metric and a finite value, for outcomes), string fields
    within the contract's size limits (``proto.limits``) and a known schema version (unset is fine:
    ``complete`` fills it in). Readers apply it too (``received_event_problem``).
    """
    outcome = isinstance(message, events_pb2.Outcome)
    user_id, request_id, event_id = message.user_id, message.request_id, message.event_id
    if not user_id:
        return "user_id", "must not be empty"
    maybe_long = (
        len(user_id) > _SHORT_ID
        or len(request_id) > _SHORT_ID
        or len(event_id) > _SHORT_ID
        or len(message.experiment_key) > _SHORT_NAME
        or len(message.variant_key) > _SHORT_NAME
    )
    if outcome:
        metric = message.metric
        if not metric:
            return "metric", "must not be empty"
        if not math.isfinite(message.value):
            return "value", "must be a finite number (NaN and infinity are not)"
        maybe_long = maybe_long or len(metric) > _SHORT_NAME
    else:
        model = message.model
        maybe_long = (
            maybe_long
            or len(message.stage) > _SHORT_NAME
            or len(model.name) > _SHORT_NAME
            or len(model.version) > _SHORT_NAME
        )
    if maybe_long:
        problem = _limits_problem(message)
        if problem is not None:
            return problem
    version = message.schema_version
    sendable = OUTCOME_SCHEMA_VERSIONS if outcome else SENDABLE_SCHEMA_VERSIONS
    if version != events_pb2.SCHEMA_VERSION_UNSPECIFIED and version not in sendable:
        return "schema_version", f"{version} is unknown"
    return None if outcome else teams_problem(message)


def _limits_problem(message: events_pb2.Exposure | events_pb2.Outcome) -> tuple[str, str] | None:
    """``limits.request_problem`` on the event's ids and names, in the order ``event_problem`` checks them."""
    names = {"experiment_key": message.experiment_key, "variant_key": message.variant_key}
    if isinstance(message, events_pb2.Outcome):
        names["metric"] = message.metric
    else:
        model = message.model
        names |= {"stage": message.stage, "model.name": model.name, "model.version": model.version}
    return limits.request_problem(
        ids={"user_id": message.user_id, "request_id": message.request_id, "event_id": message.event_id},
        names=names,
    )


def received_event_problem(message: events_pb2.Exposure | events_pb2.Outcome) -> tuple[str, str] | None:
    """``(field, reason)`` when a reader of the event topics must skip an event, else None.

    The rule every reader applies (the analytics consumer; ``deploy/clickhouse/ingest.sql`` mirrors it): an
    event is read when producers could have sent it, i.e. it passes ``event_problem`` and has the fields
    ``complete`` fills in before sending (an event id, a schema version, an event time). So an event another
    producer wrote straight to Kafka counts only when ours would have sent it. A reader does not check the
    range of the time (``event_time_problem``): that is checked against the receiver's clock where outcomes
    are reported, and the producer sends events of any time (replays, tests).
    """
    problem = event_problem(message)
    if problem is not None:
        return problem
    if not message.event_id:
        return "event_id", "must not be empty"
    if message.schema_version == events_pb2.SCHEMA_VERSION_UNSPECIFIED:
        return "schema_version", "must be set"
    if not message.event_time_ms:
        return "event_time_ms", "must be set"
    return None


def event_time_problem(event_time_ms: int, now: int) -> tuple[str, str] | None:
    """``("event_time_ms", reason)`` when a reported time is no plausible Unix time in milliseconds, else None.

    Checked where backends report outcomes (``OutcomeClient``, ``OutcomeReporter``); 0 (unset) is the time the
    event is received. The producer does not check it: replays and tests send events of any time.

    Args:
        event_time_ms: the reported time.
        now: the receiver's clock, milliseconds since the Unix epoch.
    """
    if event_time_ms == 0:
        return None
    if event_time_ms < EARLIEST_EVENT_TIME_MS:
        return "event_time_ms", "is before 2000-01-01: milliseconds since the Unix epoch expected (seconds?)"
    if event_time_ms > now + MAX_EVENT_TIME_AHEAD_MS:
        return "event_time_ms", "is more than 1 hour ahead of the receiver's clock (microseconds? time zone?)"
    return None


def teams_problem(exposure: events_pb2.Exposure) -> tuple[str, str] | None:
    """``(field, reason)`` when an exposure's interleaving fields do not fit: an interleaving exposure (schema
    version 2, or unset with ``arms``) names its request, two arms, and one arm index (0 or 1) per item, with
    no item twice (clicks are credited by request and item); others carry none."""
    version = exposure.schema_version
    if version == events_pb2.SCHEMA_VERSION_UNSPECIFIED:
        version = INTERLEAVING_SCHEMA_VERSION if exposure.arms else SCHEMA_VERSION
    if version != INTERLEAVING_SCHEMA_VERSION:
        if exposure.teams or exposure.arms:
            return "teams", "and arms are for interleaving exposures (schema_version 2) only"
        return None
    if len(exposure.arms) != 2:
        return "arms", f"must name 2 arms, got {len(exposure.arms)}"
    if len(exposure.teams) != len(exposure.item_ids):
        return "teams", f"has {len(exposure.teams)} entries for {len(exposure.item_ids)} item_ids"
    if any(team > 1 for team in exposure.teams):
        return "teams", "must hold arm indexes 0 or 1"
    if not exposure.request_id:
        return "request_id", "must not be empty in an interleaving exposure"
    if len(set(exposure.item_ids)) != len(exposure.item_ids):
        return "item_ids", "must not repeat an item in an interleaving exposure"
    names: dict[str, str] = {}
    for i, arm in enumerate(exposure.arms):
        names |= {f"arms[{i}].key": arm.key, f"arms[{i}].model.name": arm.model.name,
                  f"arms[{i}].model.version": arm.model.version}  # fmt: skip
    return limits.request_problem(ids={}, names=names)


def check_event(message: events_pb2.Exposure | events_pb2.Outcome) -> None:
    """Raise ``InvalidEvent`` (``Type.field reason``) for what ``event_problem`` finds."""
    problem = event_problem(message)
    if problem is not None:
        raise InvalidEvent(f"{type(message).__name__}.{problem[0]} {problem[1]}")


def check_event_time(outcome: events_pb2.Outcome, now: int) -> None:
    """Raise ``InvalidEvent`` (``Outcome.event_time_ms <reason>``) for what ``event_time_problem`` finds."""
    problem = event_time_problem(outcome.event_time_ms, now)
    if problem is not None:
        raise InvalidEvent(f"Outcome.{problem[0]} {problem[1]}")


def complete(message: events_pb2.Exposure | events_pb2.Outcome) -> None:
    """Fill event id, schema version and event time in place when the caller left them unset.

    Raises:
        InvalidEvent: see ``event_problem``.
    """
    check_event(message)
    if not message.event_id:
        message.event_id = new_event_id()
    exposure = isinstance(message, events_pb2.Exposure)
    if message.schema_version == events_pb2.SCHEMA_VERSION_UNSPECIFIED:
        message.schema_version = INTERLEAVING_SCHEMA_VERSION if exposure and message.arms else SCHEMA_VERSION
    if not message.event_time_ms:
        message.event_time_ms = now_ms()


def encode_exposure(exposure: events_pb2.Exposure) -> bytes:
    """Serialise one exposure as an ``Event``."""
    return events_pb2.Event(exposure=exposure).SerializeToString()


def encode_outcome(outcome: events_pb2.Outcome) -> bytes:
    """Serialise one outcome as an ``Event``."""
    return events_pb2.Event(outcome=outcome).SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def frame_batch(encoded_events: Iterable[bytes]) -> bytes:
    """Join serialised ``Event`` messages into a serialised ``EventBatch``."""
    return b"".join(_BATCH_EVENTS_TAG + _varint(len(ev)) + ev for ev in encoded_events)


def framed_size(encoded_event: bytes) -> int:
    """Bytes one event takes inside a batch."""
    return 1 + len(_varint(len(encoded_event))) + len(encoded_event)


def decode_batch(value: bytes) -> events_pb2.EventBatch:
    """Parse a Kafka record value."""
    return events_pb2.EventBatch.FromString(value)
