"""The analytics consumer reads an event only when producers could have sent it (``received_event_problem``):
an outcome without a metric, with an oversized field or without the fields producers fill in, written to Kafka
by another producer, reached the store (2 of 20,000 fuzzed batches), though every producer refuses it."""

from __future__ import annotations

import logging
import random

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from prometheus_client import REGISTRY

from analytics.consumer.processor import decode_into
from analytics.events.errors import InvalidEvent
from analytics.events.messages import (
    complete,
    encode_exposure,
    encode_outcome,
    event_problem,
    frame_batch,
    make_exposure,
    make_outcome,
)
from analytics.store import ExposureColumns, OutcomeColumns
from analytics.store.base import InterleavedColumns, ItemOutcomeColumns
from proto import events_pb2, limits
from tests.analytics.invalid_events import AT_THE_LIMITS, INVALID, Event


def rejected(reason: str, field: str | None = None) -> float:
    """``mtrank_analytics_events_rejected_total`` for ``reason`` (and ``field``, or all fields)."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "mtrank_analytics_events_rejected"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["reason"] == reason
        and (field is None or sample.labels.get("field") == field)
    )  # fmt: skip


def _encode(event: Event) -> bytes:
    return encode_outcome(event) if isinstance(event, events_pb2.Outcome) else encode_exposure(event)


def _kept_ids(events: list[Event]) -> tuple[int, set[str]]:
    """Decode one record holding ``events``: (events rejected, event ids kept as exposures or outcomes)."""
    exposures, outcomes = ExposureColumns(), OutcomeColumns()
    n = decode_into(frame_batch(_encode(e) for e in events), exposures, outcomes, InterleavedColumns(),
                    ItemOutcomeColumns())  # fmt: skip
    return n, {row[0] for row in exposures} | {row[0] for row in outcomes}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_the_consumer_skips_what_producers_would_not_send(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    build, field = INVALID[case]
    event = build()
    sent = type(event)()
    sent.CopyFrom(event)
    try:
        complete(sent)  # what EventProducer does before sending
    except InvalidEvent:
        pass
    else:
        assert sent != event, "the producer sends it only once it has filled in the field readers miss"
    valid = [build_valid() for build_valid in AT_THE_LIMITS.values()]
    before = rejected("invalid", field)
    with caplog.at_level(logging.WARNING, logger="analytics.consumer"):
        n, kept = _kept_ids([valid[0], event, *valid[1:]])
    assert n == 1 and kept == {v.event_id for v in valid}
    assert rejected("invalid", field) - before == 1
    assert f"skipped 1 events that producers would not send: {field} " in caplog.text


def test_no_event_the_producers_refuse_reaches_the_columns() -> None:
    """Random batches of events with fields set to the values producers check for (empty, over the limits,
    non-finite, unknown versions, unset): every event the consumer keeps passes ``event_problem``, and every
    one it skips is counted."""
    rng = random.Random(7)
    mutations = {
        "user_id": ["", "u" * 513, "ü" * 200, "u2"], "request_id": ["", "r" * 513], "event_id": [""],
        "experiment_key": ["", "x" * 257], "variant_key": ["v" * 257, "é" * 129], "metric": ["", "m" * 257],
        "value": [float("nan"), float("inf"), -0.0, 1e308], "schema_version": [0, 1, 2, 99],
        "event_time_ms": [0, -5, 5], "stage": ["s" * 257],
    }  # fmt: skip
    for batch in range(300):
        events: list[Event] = []
        for i in range(8):
            event: Event = make_exposure(f"u{i}", "exp", "a", request_id="r", item_ids=[i])
            if rng.random() < 0.5:
                event = make_outcome(f"u{i}", "click", request_id="r", item_id=i)
            for field in rng.sample(sorted(mutations), rng.randrange(3)):
                if field in event.DESCRIPTOR.fields_by_name:
                    setattr(event, field, rng.choice(mutations[field]))
            event.event_id = event.event_id and f"{batch}.{i}.{event.event_id}"  # unique, or still empty
            events.append(event)
        n, kept = _kept_ids(events)
        for event in events:
            if event.event_id in kept:
                assert event_problem(event) is None, f"kept an event producers refuse: {event}"
        assert n == len(events) - len(kept)


def _string_fields(descriptor: Descriptor, prefix: str = "") -> list[str]:
    """The string fields of a message and of its singular submessages (``model.name``), named as readers
    report them; the repeated ``arms`` are ``teams_problem``'s."""
    fields = []
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            fields.append(prefix + field.name)
        elif field.message_type is not None and not field.is_repeated:
            fields += _string_fields(field.message_type, f"{prefix}{field.name}.")
    return fields


_ID_FIELDS = {"user_id", "request_id", "event_id"}
"""The fields ``proto.limits.MAX_ID_BYTES`` is for; every other string of an event: ``MAX_NAME_BYTES``."""
_STRING_FIELDS = [
    (kind, field, limits.MAX_ID_BYTES if field in _ID_FIELDS else limits.MAX_NAME_BYTES)
    for kind in (events_pb2.Exposure, events_pb2.Outcome)
    for field in _string_fields(kind.DESCRIPTOR)
]


def _set(event: Event, field: str, value: str) -> Event:
    """Set ``field`` (``model.name``: a submessage's) of ``event``; returns the event."""
    *path, name = field.split(".")
    holder = event
    for part in path:
        holder = getattr(holder, part)
    setattr(holder, name, value)
    return event


def _with(kind: type[Event], field: str, value: str) -> Event:
    """A valid event of ``kind`` with ``field`` set to ``value``."""
    if kind is events_pb2.Exposure:
        exposure = make_exposure("u1", "exp", "a", request_id="r1", model_name="mmoe", model_version="1")
        return _set(exposure, field, value)
    return _set(make_outcome("u1", "click", request_id="r1", item_id=4), field, value)


@pytest.mark.parametrize(
    ("kind", "field", "max_bytes"), _STRING_FIELDS, ids=[f"{k.__name__}.{f}" for k, f, _ in _STRING_FIELDS]
)
def test_every_string_field_of_an_event_is_held_to_its_limit(
    kind: type[Event], field: str, max_bytes: int
) -> None:
    """Every string of an event (read from the proto: a field added there is checked too), alone over its
    limit, is refused under its name by producers and readers; at its limit (in two-byte characters: past the
    quick length filter, so the exact check runs; or four-byte ones), kept. ``event_problem`` lists the fields
    twice (its quick filter and ``_limits_problem``): one left out of either lets an oversized event
    through, which this catches (removing ``stage`` from the filter fails ``Exposure.stage``)."""
    reason = f"is longer than {max_bytes} bytes (UTF-8)"
    for value, refused in (
        ("é" * (max_bytes // 2), False),
        ("😀" * (max_bytes // 4), False),
        ("a" * (max_bytes + 1), True),
        ("é" * (max_bytes // 2) + "a", True),
        ("😀" * (max_bytes // 4 + 1), True),
    ):
        event = _with(kind, field, value)
        assert event_problem(event) == ((field, reason) if refused else None), (len(value), refused)
        n, kept = _kept_ids([event])
        assert (n, kept) == ((1, set()) if refused else (0, {event.event_id})), (len(value), refused)

