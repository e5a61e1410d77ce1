"""OutcomeClient: the SDK a product backend uses to report what users did (clicks, watch time, purchases)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from analytics.events.errors import InvalidEvent
from analytics.events.messages import check_event_time, make_outcome, now_ms
from analytics.events.producer import EventProducer


class OutcomeClient:
    """Reports outcomes to Kafka through an ``EventProducer``; never blocks, never raises on broker loss.

    Example::

        with OutcomeClient("kafka:9092", journal_path="/var/lib/shop/outcomes.journal") as outcomes:
            outcomes.report("user-42", "click", request_id=rank_response_request_id, item_id=1234)
            outcomes.report("user-42", "watch_seconds", 37.5)

    Args:
        bootstrap_servers: Kafka cluster.
        producer: an existing producer to share (then ``bootstrap_servers`` is ignored and ``close`` leaves it open).
        **producer_kwargs: passed to ``EventProducer`` (topics, buffer_size, journal_path, ...).
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str] | None = None,
        *,
        producer: EventProducer | None = None,
        **producer_kwargs: Any,
    ) -> None:
        if producer is None:
            if bootstrap_servers is None:
                raise ValueError("OutcomeClient needs bootstrap_servers or a producer")
            producer_kwargs.setdefault("client_id", "mtrank-outcomes")
            producer = EventProducer(bootstrap_servers, **producer_kwargs)
            self._owns_producer = True
        else:
            self._owns_producer = False
        self.producer = producer

    def report(
        self,
        user_id: str,
        metric: str,
        value: float = 1.0,
        *,
        request_id: str = "",
        item_id: int | None = None,
        event_time_ms: int | None = None,
        event_id: str | None = None,
    ) -> str:
        """Queue one outcome; returns its event id (pass the same id again to retry without double counting).

        Args:
            request_id: the ``RankResponse.request_id`` the outcome follows from, when known.
            item_id: the item it is about (a clicked item; 0 is an item like any other), when it is about one:
                interleaving credits a click by its request and item, and one without an item to no arm.
            event_time_ms: when it happened, milliseconds since the Unix epoch (default: now); at most 1 hour
                ahead of this host's clock and not before 2000 (seconds or microseconds are refused).
            event_id: the id of an outcome reported before, to report it again (a retry); default: a new one.

        Raises:
            InvalidEvent: ``Outcome.<field> <reason>``: user_id or metric empty, value not finite, a string
                field too long, event_time_ms implausible.
        """
        outcome = make_outcome(
            user_id,
            metric,
            value,
            request_id=request_id,
            item_id=item_id,
            event_time_ms=event_time_ms,
            event_id=event_id,
        )
        check_event_time(outcome, now_ms())
        self.producer.send_outcomes([outcome])
        return outcome.event_id

    def report_many(self, outcomes: Iterable[Mapping[str, Any]]) -> list[str]:
        """Queue several outcomes given as dicts of ``report``'s arguments; returns their event ids.

        Raises:
            InvalidEvent: ``outcomes[i]: Outcome.<field> <reason>`` for the first invalid one (none is queued).
        """
        now = now_ms()
        messages = []
        for i, fields in enumerate(outcomes):
            try:
                outcome = make_outcome(**fields)
                check_event_time(outcome, now)
            except InvalidEvent as exc:
                raise InvalidEvent(f"outcomes[{i}]: {exc}") from None
            messages.append(outcome)
        self.producer.send_outcomes(messages)
        return [m.event_id for m in messages]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything reported is acknowledged by Kafka; False on timeout."""
        return self.producer.flush(timeout)

    def close(self) -> None:
        """Deliver or journal what is left (only when this client created the producer)."""
        if self._owns_producer:
            self.producer.close()

    def __enter__(self) -> OutcomeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
