"""The analytics consumer reads an event only when producers could have sent it (``received_event_problem``):
an outcome without a metric, with an oversized field or without the fields producers fill in, written to Kafka
by another producer, reached the store (2 of 20,000 fuzzed batches), though every producer refuses it."""

from __future__ import annotations

import logging
import random

import pytest
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
from proto import events_pb2
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
