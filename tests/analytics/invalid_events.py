"""Events producers would not send, each with the field readers name when they skip it, and events right at
the limits that every reader keeps: the cases both readers (the Python consumer, the ClickHouse ingest) are
held to."""

from __future__ import annotations

from collections.abc import Callable

from analytics.events.messages import make_exposure, make_outcome
from proto import events_pb2

Event = events_pb2.Exposure | events_pb2.Outcome
ARMS = (("control", "mmoe", "1"), ("treatment", "mmoe+dml", "2"))
TIME_MS = 1_795_000_000_000


def _outcome(**changes: object) -> events_pb2.Outcome:
    outcome = make_outcome("u1", "click", 1.0, request_id="r1", item_id=4, event_time_ms=TIME_MS)
    for field, value in changes.items():
        setattr(outcome, field, value)
    return outcome


def _exposure(
    change: Callable[[events_pb2.Exposure], object], interleaving: bool = False
) -> events_pb2.Exposure:
    if interleaving:
        exposure = make_exposure("u1", "il", "interleaved", request_id="r1", item_ids=[3, 4], teams=[0, 1],
                                 arms=ARMS, event_time_ms=TIME_MS)  # fmt: skip
    else:
        exposure = make_exposure("u1", "exp", "a", request_id="r1", model_name="mmoe", model_version="1",
                                 item_ids=[3, 4], event_time_ms=TIME_MS)  # fmt: skip
    change(exposure)
    return exposure


def _set(field: str, value: object) -> Callable[[events_pb2.Exposure], None]:
    return lambda exposure: setattr(exposure, field, value)


INVALID: dict[str, tuple[Callable[[], Event], str]] = {
    "outcome without a metric": (lambda: _outcome(metric=""), "Outcome.metric"),
    "outcome without a user": (lambda: _outcome(user_id=""), "Outcome.user_id"),
    "outcome of value NaN": (lambda: _outcome(value=float("nan")), "Outcome.value"),
    "outcome of value -inf": (lambda: _outcome(value=float("-inf")), "Outcome.value"),
    "outcome metric of 257 bytes": (lambda: _outcome(metric="m" * 257), "Outcome.metric"),
    "outcome metric of 129 two-byte characters": (lambda: _outcome(metric="é" * 129), "Outcome.metric"),
    "outcome user id of 513 bytes": (lambda: _outcome(user_id="u" * 513), "Outcome.user_id"),
    "outcome request id of 513 bytes": (lambda: _outcome(request_id="r" * 513), "Outcome.request_id"),
    "outcome event id of 513 bytes": (lambda: _outcome(event_id="e" * 513), "Outcome.event_id"),
    "outcome experiment key of 257 bytes": (
        lambda: _outcome(experiment_key="x" * 257),
        "Outcome.experiment_key",
    ),
    "outcome variant key of 257 bytes": (lambda: _outcome(variant_key="v" * 257), "Outcome.variant_key"),
    "outcome of schema version 2": (lambda: _outcome(schema_version=2), "Outcome.schema_version"),
    "outcome of schema version 99": (lambda: _outcome(schema_version=99), "Outcome.schema_version"),
    "outcome without a schema version": (lambda: _outcome(schema_version=0), "Outcome.schema_version"),
    "outcome without an event id": (lambda: _outcome(event_id=""), "Outcome.event_id"),
    "outcome without a time": (lambda: _outcome(event_time_ms=0), "Outcome.event_time_ms"),
    "exposure without a user": (lambda: _exposure(_set("user_id", "")), "Exposure.user_id"),
    "exposure stage of 257 bytes": (lambda: _exposure(_set("stage", "s" * 257)), "Exposure.stage"),
    "exposure model name of 257 bytes": (
        lambda: _exposure(lambda x: setattr(x.model, "name", "n" * 257)),
        "Exposure.model.name",
    ),
    "exposure model version of 257 bytes": (
        lambda: _exposure(lambda x: setattr(x.model, "version", "v" * 257)),
        "Exposure.model.version",
    ),
    "exposure user id of 513 bytes": (lambda: _exposure(_set("user_id", "u" * 513)), "Exposure.user_id"),
    "version 1 exposure with teams": (lambda: _exposure(lambda x: x.teams.extend([0, 1])), "Exposure.teams"),
    "version 1 exposure with arms": (
        lambda: _exposure(lambda x: x.arms.add(key="control")),
        "Exposure.teams",
    ),
    "interleaving arm key of 257 bytes": (
        lambda: _exposure(lambda x: setattr(x.arms[0], "key", "k" * 257), interleaving=True),
        "Exposure.arms[0].key",
    ),
    "interleaving exposure with an item twice": (
        lambda: _exposure(lambda x: x.item_ids.__setitem__(1, 3), interleaving=True),
        "Exposure.item_ids",
    ),
    "exposure of schema version 99": (
        lambda: _exposure(_set("schema_version", 99)),
        "Exposure.schema_version",
    ),
    "exposure without a schema version": (
        lambda: _exposure(_set("schema_version", 0)),
        "Exposure.schema_version",
    ),
    "exposure without an event id": (lambda: _exposure(_set("event_id", "")), "Exposure.event_id"),
    "exposure without a time": (lambda: _exposure(_set("event_time_ms", 0)), "Exposure.event_time_ms"),
}
"""Name: (build the event, the field readers report it under)."""

AT_THE_LIMITS: dict[str, Callable[[], Event]] = {
    "outcome metric of 256 bytes": lambda: _outcome(metric="é" * 128),
    "outcome ids of 512 bytes": lambda: _outcome(user_id="u" * 512, request_id="r" * 512, event_id="e" * 512),
    "outcome experiment and variant keys of 256 bytes": lambda: _outcome(
        experiment_key="x" * 256, variant_key="v" * 256
    ),
    "outcome of a time before 2000 (a replay)": lambda: _outcome(event_time_ms=5),
    "outcome of value 0 about item 0": lambda: _outcome(value=0.0, item_id=0),
    "exposure names of 256 bytes": lambda: _exposure(
        lambda x: (setattr(x, "stage", "s" * 256), setattr(x.model, "name", "ñ" * 128))
    ),
    "interleaving exposure with arm names of 256 bytes": lambda: _exposure(
        lambda x: setattr(x.arms[1].model, "version", "v" * 256), interleaving=True
    ),
}
"""Events producers send (``event_problem`` finds nothing): every reader keeps them."""
