"""EventProducer: hands exposures and outcomes to Kafka without ever blocking or failing the caller.

Path of an event: the caller's ``send_*`` serialises it and appends it to a bounded in-memory buffer; when the
buffer is full (broker away for a while) it goes to a local append-only journal instead, and once the journal is
in use every new event goes there too, so order is kept. A background thread takes events in order (buffer
first, then journal), groups them by partition, packs several per Kafka record (``EventBatch``) and waits for
the broker's acknowledgement (acks=all: the embedded broker loses messages with acks=0). A failed delivery keeps
the events, throws the KafkaProducer away (the broker may have lost its state: topics, producer ids) and retries
with a new one after a back-off. Delivery is at-least-once; consumers deduplicate by event id.

An event that can never be delivered must not hold up the ones behind it (the sender retries in order, so one
poisoned event would block the queue and, after a restart, the journal for good). Such events are set aside
in a dead-letter file next to the journal and counted (``mtrank_events_dead_lettered_total``): invalid events
(no user id, a string field over ``proto.limits``) when they are sent, and events larger than one record when
they enter delivery. When Kafka refuses a record as too large (its size limit is below ``max_record_bytes``),
the record limit is halved and the records rebuilt, so big records are split and an event that alone is too
large is dead-lettered.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError, RecordListTooLargeError
from kafka.partitioner.default import murmur2
from prometheus_client import Counter

from analytics.events import messages
from analytics.events.errors import InvalidEvent
from analytics.events.journal import Journal
from analytics.kafka.broker import DEFAULT_DATA_DIR
from proto import events_pb2

log = logging.getLogger(__name__)

EXPOSURES_TOPIC = "mtrank.exposures"
OUTCOMES_TOPIC = "mtrank.outcomes"

EVENTS_SENT = Counter("mtrank_events_sent_total", "Events acknowledged by Kafka", ["topic"])
EVENTS_BUFFERED = Counter(
    "mtrank_events_buffered_total", "Events accepted into the in-memory buffer", ["topic"]
)
EVENTS_JOURNALLED = Counter(
    "mtrank_events_journalled_total", "Events written to the local journal", ["topic"]
)
EVENTS_DROPPED = Counter("mtrank_events_dropped_total", "Events lost: buffer and journal full", ["topic"])
EVENTS_DEAD_LETTERED = Counter(
    "mtrank_events_dead_lettered_total",
    "Events that can never be delivered (invalid, or too large for a record), set aside",
    ["topic", "reason"],
)
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
_MIN_RECORD_BYTES = 1024
_FRAME_BYTES = 6  # an event's framing inside a batch at most: tag + length varint (< 2**35)

# (topic, key, serialised Event)
_Item = tuple[str, bytes, bytes]


class _RecordRefused(Exception):
    """Kafka refused a record of ``size`` bytes as too large."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


@dataclass
class ProducerStats:
    """Per-instance counts (the Prometheus counters add up all producers of the process)."""

    sent: int = 0
    buffered: int = 0
    journalled: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    producer_restarts: int = 0


class EventProducer:
    """Non-blocking, loss-averse producer of experiment events.

    Args:
        bootstrap_servers: ``host:port[,host:port]`` of the Kafka cluster.
        exposures_topic: topic for exposures.
        outcomes_topic: topic for outcomes.
        buffer_size: events held in memory before spilling to the journal.
        journal_path: journal file; ``"auto"`` = the first journal slot ``.data/journal/<client_id>.<n>.journal``
            not held by another live producer (so worker processes each get one, and a restarted worker replays
            what a crashed one left); None disables the journal (events beyond the buffer are dropped, counted).
        journal_max_bytes: journal size cap; beyond it events are dropped and counted.
        dead_letter_max_bytes: size cap of the dead-letter file ``<journal>.dead`` (only with a journal); beyond
            it dead-lettered events are only counted.
        max_events_per_record: events packed into one Kafka record.
        max_record_bytes: size cap of one Kafka record value.
        linger_ms: how long the sender waits to fill a batch.
        retry_backoff_s: pause after a failed delivery before reconnecting.
        delivery_timeout_s: how long one delivery attempt may take before it counts as failed.
        client_id: Kafka client id (also names the default journal).
        kafka_config: extra ``KafkaProducer`` settings (e.g. security options for a real cluster).
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        *,
        exposures_topic: str = EXPOSURES_TOPIC,
        outcomes_topic: str = OUTCOMES_TOPIC,
        buffer_size: int = 100_000,
        journal_path: str | Path | None = "auto",
        journal_max_bytes: int = 1 << 30,
        dead_letter_max_bytes: int = 64 << 20,
        max_events_per_record: int = 500,
        max_record_bytes: int = 512 * 1024,
        linger_ms: int = 20,
        retry_backoff_s: float = 0.5,
        delivery_timeout_s: float = 10.0,
        client_id: str = "mtrank-events",
        kafka_config: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.exposures_topic = exposures_topic
        self.outcomes_topic = outcomes_topic
        self.buffer_size = buffer_size
        self.max_events_per_record = max_events_per_record
        self.max_record_bytes = max_record_bytes
        self._record_limit = max_record_bytes  # lowered when Kafka refuses records as too large
        self.linger_s = linger_ms / 1000
        self.retry_backoff_s = retry_backoff_s
        self.delivery_timeout_s = delivery_timeout_s
        self.client_id = client_id
        self._kafka_config = dict(kafka_config or {})
        if journal_path == "auto":
            self._journal: Journal | None = Journal.first_free_slot(
                DEFAULT_DATA_DIR / "journal", client_id, max_bytes=journal_max_bytes
            )
        else:
            self._journal = Journal(journal_path, max_bytes=journal_max_bytes) if journal_path else None
        self._dead_letters = (
            Journal(
                self._journal.path.with_name(self._journal.path.name + ".dead"),
                max_bytes=dead_letter_max_bytes,
            )
            if self._journal is not None
            else None
        )
        self.stats = ProducerStats()
        self._buffer: collections.deque[_Item] = collections.deque()
        self._inflight: list[_Item] = []
        self._inflight_journal_pos: int | None = None
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._closing = False
        self._dropping = 0  # events dropped for want of room since all was last delivered (logged then)
        self._producer: KafkaProducer | None = None
        self._partitions: dict[str, list[int]] = {}
        self._thread = threading.Thread(target=self._run, name=f"{client_id}-sender", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side

    def send_exposures(self, exposures: Iterable[events_pb2.Exposure]) -> int:
        """Queue exposures; returns how many were queued.

        Event id, schema version and time are filled in (in place) when unset. An exposure without a user id or
        with an unknown schema version is a caller bug: it is logged and dead-lettered, never raised, so a
        telemetry problem cannot fail a ranking request. The valid ones are queued together or, when the buffer
        and the journal are full (or the producer is closed), not at all (0, counted as dropped).
        """
        return self._send(exposures, self.exposures_topic, messages.encode_exposure)

    def send_outcomes(self, outcomes: Iterable[events_pb2.Outcome]) -> int:
        """Queue outcomes; returns how many were queued (as ``send_exposures`` does)."""
        return self._send(outcomes, self.outcomes_topic, messages.encode_outcome)

    def _send(self, events: Iterable[Any], topic: str, encode: Callable[[Any], bytes]) -> int:
        items = []
        for event in events:
            try:
                messages.complete(event)
            except InvalidEvent as exc:
                log.error("dead-lettering an invalid event for %s: %s", topic, exc)
                with self._lock:
                    self._dead_letter_locked(topic, encode(event), "invalid")
                continue
            items.append((topic, event.user_id.encode(), encode(event)))
        return self._enqueue(topic, items)

    def _enqueue(self, topic: str, items: list[_Item]) -> int:
        if not items:
            return 0
        n = len(items)
        with self._lock:
            if self._closing:
                log.warning("EventProducer is closed; %d events to %s not queued", n, topic)
                self._count_dropped(topic, n)
                return 0
            spilling = self._journal is not None and bool(self._journal)
            # in-flight events count against the bound: they are held in memory until acknowledged
            if not spilling and len(self._buffer) + len(self._inflight) + n <= self.buffer_size:
                self._buffer.extend(items)
                self.stats.buffered += n
                EVENTS_BUFFERED.labels(topic).inc(n)
            elif self._journal is not None and self._journal.append([ev for _, _, ev in items]):
                self.stats.journalled += n
                EVENTS_JOURNALLED.labels(topic).inc(n)
            else:
                if not self._dropping:  # once: callers send an event or a few at a time
                    log.error("event buffer and journal full: dropping the events that do not fit (%d to %s "
                              "first; counted in mtrank_events_dropped_total, summed up when all is sent)",
                              n, topic)  # fmt: skip
                self._dropping += n
                self._count_dropped(topic, n)
                return 0
            self._wakeup.notify()
        return n

    def _count_dropped(self, topic: str, n: int) -> None:
        self.stats.dropped += n
        EVENTS_DROPPED.labels(topic).inc(n)

    def _dead_letter_locked(self, topic: str, encoded: bytes, reason: str) -> None:
        """Set one undeliverable event aside (in ``<journal>.dead`` when there is a journal) and count it."""
        self.stats.dead_lettered += 1
        EVENTS_DEAD_LETTERED.labels(topic, reason).inc()
        if self._dead_letters is None or not self._dead_letters.append([encoded]):
            log.error("dead letter for %s (%s, %d bytes) not kept: no dead-letter file, or it is full", topic,
                      reason, len(encoded))  # fmt: skip

    @property
    def pending(self) -> int:
        """Events accepted but not acknowledged yet (buffer, in flight; journal counted by ``journal_bytes``)."""
        with self._lock:
            return len(self._buffer) + len(self._inflight)

    @property
    def journal_bytes(self) -> int:
        """Journal bytes waiting for replay."""
        with self._lock:
            return self._journal.pending_bytes if self._journal is not None else 0

    def _drained(self) -> bool:
        return not self._buffer and not self._inflight and not (self._journal is not None and self._journal)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event (journal included) is acknowledged; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._wakeup.notify()
            while not self._drained():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if not self._thread.is_alive():
                    return False
                self._idle.wait(timeout=0.2 if remaining is None else min(remaining, 0.2))
            return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what it can within ``timeout``; whatever is left goes to the journal (or is counted dropped).

        Idempotent: later calls do nothing.
        """
        if self._closing:
            return
        self.flush(timeout)
        with self._lock:
            self._closing = True
            self._wakeup.notify()
        self._thread.join(timeout=self.delivery_timeout_s + 5)
        with self._lock:
            # events in flight from the journal are still in it (its position only advances on success)
            leftover = (self._inflight if self._inflight_journal_pos is None else []) + list(self._buffer)
            self._inflight, self._buffer = [], collections.deque()
            if leftover:
                if self._journal is not None and self._journal.append([ev for _, _, ev in leftover]):
                    log.warning(
                        "EventProducer closed with %d undelivered events: kept in the journal", len(leftover)
                    )
                else:
                    log.error("EventProducer closed with %d undelivered events: dropped", len(leftover))
                    for topic, _, _ in leftover:
                        self._count_dropped(topic, 1)
            for journal in (self._journal, self._dead_letters):
                if journal is not None:
                    journal.close()
        if self._producer is not None:
            self._producer.close(timeout=1)
            self._producer = None

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ sender thread

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._inflight:
                    self._take_locked()
                if not self._inflight:
                    self._idle.notify_all()
                    if self._closing:
                        return
                    self._wakeup.wait(timeout=0.5)
                    continue
                batch = list(self._inflight)
            if len(batch) < self.max_events_per_record and self.linger_s and not self._closing:
                time.sleep(self.linger_s)  # let a few more events arrive to share records
                with self._lock:
                    if self._inflight_journal_pos is None:
                        self._top_up_locked()
                    batch = list(self._inflight)
            ok = self._deliver(batch)
            with self._lock:
                if ok:
                    self._complete_locked(batch)
                elif self._closing:
                    return
            if not ok:
                time.sleep(self.retry_backoff_s)

    def _take_locked(self) -> None:
        """Move the next chunk (buffer first, then journal) into ``_inflight``."""
        chunk = self._chunk_size()
        if self._buffer:
            self._top_up_locked()
        elif self._journal is not None and self._journal:
            encoded, pos = self._journal.read(chunk)
            self._inflight = [item for item in map(self._journal_item, encoded) if self._fits_locked(item)]
            self._inflight_journal_pos = pos

    def _chunk_size(self) -> int:
        """Events per delivery round (one wait for acknowledgements)."""
        return max(self.max_events_per_record * 64, 20_000)

    def _top_up_locked(self) -> None:
        room = self._chunk_size() - len(self._inflight)
        while room > 0 and self._buffer:
            item = self._buffer.popleft()
            if self._fits_locked(item):
                self._inflight.append(item)
                room -= 1

    def _fits_locked(self, item: _Item) -> bool:
        """False (and the event dead-lettered) when it cannot fit one record under the current record limit."""
        topic, key, encoded = item
        size = len(key) + len(encoded) + _FRAME_BYTES  # framed_size() costs 1 us per event on this path
        if size <= self._record_limit:
            return True
        log.error("dead-lettering an event for %s: %d bytes, a record holds at most %d", topic, size,
                  self._record_limit)  # fmt: skip
        self._dead_letter_locked(topic, encoded, "too_large")
        return False

    def _shrink_records_locked(self, refused: int) -> None:
        """Kafka refused a record of ``refused`` bytes as too large: halve the record limit, re-screen in flight."""
        limit = max(min(self._record_limit, refused) // 2, _MIN_RECORD_BYTES)
        log.warning("Kafka refused a %d-byte record as too large: records are capped at %d bytes from now on",
                    refused, limit)  # fmt: skip
        self._record_limit = limit
        self._inflight = [item for item in self._inflight if self._fits_locked(item)]

    def _journal_item(self, encoded: bytes) -> _Item:
        event = events_pb2.Event.FromString(encoded)
        if event.WhichOneof("payload") == "exposure":
            return self.exposures_topic, event.exposure.user_id.encode(), encoded
        return self.outcomes_topic, event.outcome.user_id.encode(), encoded

    def _complete_locked(self, batch: list[_Item]) -> None:
        del self._inflight[: len(batch)]
        if self._inflight_journal_pos is not None and not self._inflight:
            assert self._journal is not None
            self._journal.advance(self._inflight_journal_pos)
            self._inflight_journal_pos = None
        per_topic = collections.Counter(topic for topic, _, _ in batch)
        for topic, n in per_topic.items():
            EVENTS_SENT.labels(topic).inc(n)
        self.stats.sent += len(batch)
        if self._drained():
            self._idle.notify_all()
            if self._dropping:
                log.warning(
                    "every queued event delivered; %d were dropped while there was no room", self._dropping
                )
                self._dropping = 0

    def _kafka_producer(self) -> KafkaProducer:
        if self._producer is None:
            timeout_ms = int(self.delivery_timeout_s * 1000)
            linger_ms, request_timeout_ms = 5, max(timeout_ms // 2, 1000)
            config: dict[str, Any] = {
                "bootstrap_servers": self.bootstrap_servers,
                "client_id": self.client_id,
                "acks": "all",
                "enable_idempotence": False,  # a broker that lost its state forgets producer ids; we dedup by id
                "linger_ms": linger_ms,
                "batch_size": self.max_record_bytes + 1024,
                "max_request_size": 4 * self.max_record_bytes,
                "max_block_ms": timeout_ms,
                "bootstrap_timeout_ms": timeout_ms,
                "request_timeout_ms": request_timeout_ms,
                # kafka-python refuses a delivery timeout up to linger + request timeout (nothing is sent)
                "delivery_timeout_ms": max(timeout_ms, linger_ms + request_timeout_ms + 1),
                "retries": 3,
                "max_in_flight_requests_per_connection": 1,  # retries never reorder a partition's records
                "reconnect_backoff_max_ms": 1000,
            }
            config.update(self._kafka_config)
            self._producer = KafkaProducer(**config)
            self._partitions.clear()
        return self._producer

    def _partitions_for(self, producer: KafkaProducer, topic: str) -> list[int]:
        parts = self._partitions.get(topic)
        if parts is None:
            found = producer.partitions_for(topic)
            if not found:
                raise LookupError(f"topic {topic} has no partitions (not created yet?)")
            parts = self._partitions[topic] = sorted(found)
        return parts

    def _records(
        self, producer: KafkaProducer, batch: Sequence[_Item]
    ) -> list[tuple[str, int, bytes, bytes]]:
        """Group by (topic, partition of the key) and pack into EventBatch records (topic, partition, key, value)
        of at most ``max_events_per_record`` events and the record limit in bytes (key included)."""
        groups: dict[tuple[str, int], list[_Item]] = {}
        for item in batch:
            topic, key, _ = item
            parts = self._partitions_for(producer, topic)
            partition = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]  # Kafka's default partitioner
            groups.setdefault((topic, partition), []).append(item)
        records = []
        for (topic, partition), items in groups.items():
            chunk: list[bytes] = []
            first_key = items[0][1]
            size = len(first_key)
            for _, key, ev in items:
                n = messages.framed_size(ev)
                if chunk and (len(chunk) >= self.max_events_per_record or size + n > self._record_limit):
                    records.append((topic, partition, first_key, messages.frame_batch(chunk)))
                    chunk, first_key, size = [], key, len(key)
                chunk.append(ev)
                size += n
            records.append((topic, partition, first_key, messages.frame_batch(chunk)))
        return records

    def _deliver(self, batch: Sequence[_Item]) -> bool:
        """Send and wait for acknowledgement; on a record refused as too large split the records (see
        ``_shrink_records_locked``), on any other failure drop the KafkaProducer (recreated next time)."""
        try:
            producer = self._kafka_producer()
            futures = []
            for topic, partition, key, value in self._records(producer, batch):
                size = len(key) + len(value)
                try:
                    futures.append((size, producer.send(topic, value=value, key=key, partition=partition)))
                except _TOO_LARGE:  # over the client's max_request_size
                    raise _RecordRefused(size) from None
            producer.flush(timeout=self.delivery_timeout_s)
            for size, future in futures:
                try:
                    future.get(timeout=self.delivery_timeout_s)
                except _TOO_LARGE:  # over the broker's or the topic's message size limit
                    raise _RecordRefused(size) from None
            return True
        except _RecordRefused as refused:  # the connection is fine: keep the producer
            with self._lock:
                self._shrink_records_locked(refused.size)
            return False
        except Exception as exc:  # noqa: BLE001 - any client failure means "retry later", never the caller's problem
            log.warning(
                "delivering %d events failed (%s: %s); retrying with a new producer",
                len(batch),
                type(exc).__name__,
                exc,
            )
            self._reset_producer()
            return False

    def _reset_producer(self) -> None:
        producer, self._producer = self._producer, None
        self._partitions.clear()
        self.stats.producer_restarts += 1
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:  # noqa: BLE001 - closing a broken client may fail in many ways
                log.debug("closing the failed KafkaProducer raised", exc_info=True)
