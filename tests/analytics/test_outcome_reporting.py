"""How backends report outcomes (``OutcomeClient``, the gRPC ``OutcomeReporter``): a request is taken whole or
refused with a status naming why, event times must be milliseconds, and a retry with the event ids counts once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from analytics.consumer.processor import decode_into
from analytics.events.client import OutcomeClient
from analytics.events.errors import InvalidEvent
from analytics.events.messages import frame_batch, now_ms
from analytics.events.outcome_server import build_server
from analytics.events.producer import EventProducer
from analytics.kafka.broker import EmbeddedBroker, free_port
from analytics.store import ExposureColumns, ExposureRow, MemoryEventStore, OutcomeColumns
from proto import events_pb2, outcomes_pb2, outcomes_pb2_grpc

HOUR_MS = 3_600_000


def _request(*outcomes: events_pb2.Outcome) -> outcomes_pb2.ReportOutcomesRequest:
    return outcomes_pb2.ReportOutcomesRequest(outcomes=outcomes)


def _click(**fields: Any) -> events_pb2.Outcome:
    return events_pb2.Outcome(**{"user_id": "u1", "metric": "click", "value": 1.0, **fields})


@pytest.fixture
def unreachable() -> Iterator[EventProducer]:
    """A producer whose broker never answers: events stay in its buffer of 3 (no journal)."""
    producer = EventProducer(
        f"127.0.0.1:{free_port()}", buffer_size=3, journal_path=None, delivery_timeout_s=0.5
    )
    yield producer
    producer.close(timeout=0.5)


@pytest.fixture
def reporter(unreachable: EventProducer) -> Iterator[outcomes_pb2_grpc.OutcomeReporterStub]:
    server, port = build_server(unreachable, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield outcomes_pb2_grpc.OutcomeReporterStub(channel)
    finally:
        server.stop(0)


def test_a_full_queue_is_resource_exhausted_not_ok_with_nothing_accepted(
    reporter: outcomes_pb2_grpc.OutcomeReporterStub, unreachable: EventProducer
) -> None:
    """The README promised RESOURCE_EXHAUSTED for a full queue; the server answered OK with ``accepted: 0``, and a
    backend that checked the status (as gRPC clients do) never knew its outcomes were dropped."""
    assert reporter.ReportOutcomes(_request(_click(), _click()), timeout=5).accepted == 2
    with pytest.raises(grpc.RpcError) as info:
        reporter.ReportOutcomes(_request(_click(), _click()), timeout=5)  # 4 > the buffer's 3: none fits
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (
        "the event buffer and journal are full (Kafka unreachable?): none of the 2 outcomes was accepted; "
        "retry later"
    )
    assert reporter.ReportOutcomes(_request(_click()), timeout=5).accepted == 1  # what fits is still taken
    assert unreachable.stats.buffered == 3 and unreachable.pending == 3


NOW = now_ms()
IMPLAUSIBLE_TIMES = {
    "seconds": (NOW // 1000, "is before 2000-01-01: milliseconds since the Unix epoch expected (seconds?)"),
    "negative": (-5, "is before 2000-01-01: milliseconds since the Unix epoch expected (seconds?)"),
    "microseconds": (NOW * 1000, "is more than 1 hour ahead of the receiver's clock (microseconds? time zone?)"),
    "two-hours-ahead": (NOW + 2 * HOUR_MS, "is more than 1 hour ahead of the receiver's clock (microseconds? "
                        "time zone?)"),
}  # fmt: skip


@pytest.mark.parametrize(("event_time_ms", "reason"), IMPLAUSIBLE_TIMES.values(), ids=IMPLAUSIBLE_TIMES)
def test_event_times_that_are_no_milliseconds_are_refused_naming_the_field(
    reporter: outcomes_pb2_grpc.OutcomeReporterStub,
    unreachable: EventProducer,
    event_time_ms: int,
    reason: str,
) -> None:
    """Seconds were stored as January 1970 (every outcome before the user's first exposure: counted as a
    pre-exposure value, the experiment's metric 0), microseconds thousands of years ahead (never attributed)."""
    with pytest.raises(grpc.RpcError) as info:
        reporter.ReportOutcomes(_request(_click(), _click(event_time_ms=event_time_ms)), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"outcomes[1].event_time_ms {reason}"
    client = OutcomeClient(producer=unreachable)
    with pytest.raises(InvalidEvent) as raised:
        client.report("u1", "click", event_time_ms=event_time_ms)
    assert str(raised.value) == f"Outcome.event_time_ms {reason}"
    assert unreachable.stats.buffered == 0, "nothing of a refused request or report is queued"


def test_plausible_event_times_are_accepted(
    reporter: outcomes_pb2_grpc.OutcomeReporterStub, unreachable: EventProducer
) -> None:
    """Unset (0: the time it arrives), a month old (a late purchase), and ahead within clock skew."""
    times = (0, NOW - 30 * 24 * HOUR_MS, now_ms() + HOUR_MS // 2)
    assert (
        reporter.ReportOutcomes(_request(*(_click(event_time_ms=t) for t in times)), timeout=5).accepted == 3
    )


def test_report_many_names_the_entry_it_refuses_and_queues_none(unreachable: EventProducer) -> None:
    """One bad dict among many raised ``Outcome.user_id must not be empty``: which of them?"""
    client = OutcomeClient(producer=unreachable)
    good = {"user_id": "u1", "metric": "click"}
    for bad, message in (
        ({"user_id": "", "metric": "click"}, "outcomes[1]: Outcome.user_id must not be empty"),
        ({**good, "event_time_ms": 1_700_000_000}, "outcomes[1]: Outcome.event_time_ms is before 2000-01-01"),
    ):
        with pytest.raises(InvalidEvent) as raised:
            client.report_many([good, bad, good])
        assert str(raised.value).startswith(message)
    assert unreachable.stats.buffered == 0


class _Sent(list[events_pb2.Outcome]):
    """Stands in for the producer: keeps the outcomes the client builds."""

    def send_outcomes(self, outcomes: list[events_pb2.Outcome]) -> int:
        self.extend(outcomes)
        return len(outcomes)


def test_an_outcome_names_an_item_only_when_given() -> None:
    """``item_id`` defaulted to 0, and proto3 sent item 0 as no item: a click reported with its request but no
    item was credited to the interleaving arm that showed item 0. Now the item is set when given, 0 included."""
    sent = _Sent()
    client = OutcomeClient(producer=cast(EventProducer, sent))
    client.report("u1", "click", request_id="r1")
    client.report("u1", "click", request_id="r1", item_id=0)
    client.report_many([{"user_id": "u1", "metric": "click", "request_id": "r1", "item_id": item}
                        for item in (None, 0, -4)])  # fmt: skip
    found = [(o.HasField("item_id"), o.item_id) for o in sent]
    assert found == [(False, 0), (True, 0), (False, 0), (True, 0), (True, -4)]
    wire = [events_pb2.Outcome.FromString(o.SerializeToString()).HasField("item_id") for o in sent[:2]]
    assert wire == [False, True]  # item 0 goes on the wire (field 10, 0), no item does not


@pytest.mark.integration
def test_a_retried_report_counts_once_when_it_carries_the_event_ids(
    kafka_broker: EmbeddedBroker, fresh_topics: tuple[str, str], tmp_path: Path, topic_reader: Callable
) -> None:
    """A ReportOutcomes sent again after its answer was lost: with event ids its copies are one purchase in the
    store, as OutcomeClient.report(..., event_id=) retries are; without, the server mints an id per copy (as
    outcomes.proto says) and both count."""
    _, topic = fresh_topics
    producer = EventProducer(kafka_broker.bootstrap, outcomes_topic=topic, journal_path=tmp_path / "j")
    server, port = build_server(producer, "127.0.0.1:0")
    server.start()
    with_ids = _request(events_pb2.Outcome(event_id="order-7", user_id="u1", metric="purchase", value=9.5))
    without = _request(events_pb2.Outcome(user_id="u2", metric="purchase", value=9.5))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = outcomes_pb2_grpc.OutcomeReporterStub(channel)
            for request in (with_ids, without, with_ids, without):
                assert stub.ReportOutcomes(request, timeout=5).accepted == 1
        client = OutcomeClient(producer=producer)
        event_id = client.report("u3", "purchase", 2.0)
        assert client.report("u3", "purchase", 2.0, event_id=event_id) == event_id
        assert producer.flush(30)
    finally:
        server.stop(0)
        producer.close()
    events = topic_reader(kafka_broker.bootstrap, topic, 6)
    outcomes = OutcomeColumns()
    assert decode_into(frame_batch(e.SerializeToString() for e in events), ExposureColumns(), outcomes) == 0
    ids = sorted(zip(outcomes.user_id, outcomes.event_id, strict=True))
    assert [i for i in ids if i[0] != "u2"] == [("u1", "order-7")] * 2 + [("u3", event_id)] * 2
    assert len({i for i in ids if i[0] == "u2"}) == 2
    store = MemoryEventStore()
    store.apply([ExposureRow(f"e{u}", "exp", "a", f"u{u}", NOW - HOUR_MS) for u in (1, 2, 3)], outcomes, {})
    assert sorted(store.user_metric_values("exp", "purchase")) == [
        ("a", 2.0, 1, 0.0),  # u3, reported twice with its id by the SDK
        ("a", 9.5, 1, 0.0),  # u1, its request sent twice
        ("a", 19.0, 2, 0.0),  # u2: no event id, counted twice
    ]
