"""The analytics consumer: Kafka events in, per-user state out, offsets committed only after the state is durable.

It only turns events into stored state; statistics are computed elsewhere (``analytics.stats``) from the store.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from analytics.consumer.checkpoint import Checkpoint, resume_points
from analytics.consumer.kafka_consumer import Consumer
from analytics.events.messages import INTERLEAVING_SCHEMA_VERSION, received_event_problem
from analytics.events.producer import EXPOSURES_TOPIC, OUTCOMES_TOPIC
from analytics.store.base import (
    EventStore,
    ExposureColumns,
    InterleavedColumns,
    ItemOutcomeColumns,
    OutcomeColumns,
    TopicPartition,
)
from proto import events_pb2

log = logging.getLogger(__name__)

EVENTS_CONSUMED = Counter(
    "mtrank_analytics_events_consumed_total", "Events read from Kafka into the checkpoint"
)
EVENTS_REJECTED = Counter(
    "mtrank_analytics_events_rejected_total",
    "Events skipped: undecodable records, invalid events (field: the first at fault, e.g. Outcome.metric)",
    ["reason", "field"],
)
RECORDS_REPLAYED = Counter("mtrank_analytics_records_replayed_total", "Records skipped: already in the store")
BROKER_UNREACHABLE = Counter(
    "mtrank_analytics_broker_unreachable_total", "Polls that failed because Kafka did not answer (retried)"
)
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 5.0
"""Waits between polls while Kafka does not answer: doubling from the first to the most."""
CONSUMER_LAG = Gauge(
    "mtrank_analytics_consumer_lag_records",
    "Records in Kafka not yet durable in the store, per assigned partition",
    ["topic", "partition"],
)
RECORDS_EXPIRED = Counter(
    "mtrank_analytics_records_expired",
    "Records Kafka deleted (retention) before the consumer read them: their events are not in the store",
    ["topic", "partition"],
)


def _interleaved(x: events_pb2.Exposure, append: tuple[Callable[[object], None], ...]) -> None:
    """Append a valid version 2 exposure's lists (``received_event_problem`` checked them) to the interleaved
    columns."""
    a, b = x.arms
    values = (x.event_id, x.experiment_key, x.user_id, x.request_id, x.event_time_ms, list(x.item_ids), list(x.teams),
              a.key, a.model.name, a.model.version, b.key, b.model.name, b.model.version)  # fmt: skip
    for column, value in zip(append, values, strict=True):
        column(value)


def records_lost_to_retention(expected: int, first_read: int, log_start: int) -> int:
    """How many records of a partition were deleted before they were read: the record read after offset
    ``expected - 1`` was at ``first_read``, and the partition's log now starts at ``log_start``.

    A fetch below the log start is answered OFFSET_OUT_OF_RANGE, and kafka-python starts again at the log
    start (``auto_offset_reset``) with one INFO line: the records from ``expected`` to the log start were
    never read. Offsets skipped for another reason (a transaction marker, compaction) lie at or above the log
    start: nothing was lost. The log start may have moved on since the read: only offsets below
    ``first_read`` count.
    """
    return max(min(first_read, log_start) - expected, 0)


def _place(where: str, offset: int | None) -> str:
    return where if offset is None else f"{where} offset {offset}"


def decode_into(
    value: bytes | None,
    exposures: ExposureColumns,
    outcomes: OutcomeColumns,
    interleaved: InterleavedColumns | None = None,
    item_outcomes: ItemOutcomeColumns | None = None,
    where: str = "a record",
    offset: int | None = None,
) -> int:
    """Append the events of one Kafka record value to the column batches; returns how many were rejected.

    Each field goes straight into its column list: the stores write columns (Arrow/Parquet), so no per-event
    tuple is ever built on this hot path. An interleaving exposure (version 2) goes to ``exposures`` (variant
    ``"interleaved"``) and with its items, teams and arms to ``interleaved``; without ``interleaved`` it is
    rejected, as by a reader that cannot credit teams. An outcome that names a request and an item (one whose
    ``item_id`` is set, to 0 or any other id) also goes to ``item_outcomes`` when given. An event producers
    would not send (``received_event_problem``: the readers' rule) is skipped and counted under the field at
    fault (``mtrank_analytics_events_rejected_total{reason="invalid", field="Outcome.metric"}``, say); the
    batch's other events are kept. A value that holds no event is rejected as a whole: protobuf parses many
    other messages (an ``Event`` outside its batch, say) as an ``EventBatch`` of unknown fields. Warnings name
    the record as ``where`` and ``offset`` say (e.g. ``"mtrank.outcomes[3]"`` and 17: ``mtrank.outcomes[3]
    offset 17``), formatted only when one is logged.
    """
    try:
        batch = events_pb2.EventBatch.FromString(value)
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError or RuntimeWarning subclasses
        batch = None
    if batch is None or not batch.events:
        EVENTS_REJECTED.labels("undecodable", "").inc()
        # a null value (a tombstone, which Kafka allows) is skipped too: a crash would repeat at every restart
        size = "a null value" if value is None else f"{len(value)} bytes"
        detail = "" if batch is None else ", no events"
        log.warning(
            "%s: skipping a record that is not an EventBatch (%s%s)", _place(where, offset), size, detail
        )
        return 1
    problems: collections.Counter[tuple[str, str]] = collections.Counter()  # (Type.field, reason): events
    x_id, x_exp, x_var, x_user, x_ts = exposures.appenders()
    o_id, o_user, o_metric, o_ts, o_value = outcomes.appenders()
    i_append = interleaved.appenders() if interleaved is not None else ()
    r_append = item_outcomes.appenders() if item_outcomes is not None else None
    for event in batch.events:
        kind = event.WhichOneof("payload")
        if kind == "exposure":
            x = event.exposure
            problem = received_event_problem(x)
            if problem is None and x.schema_version == INTERLEAVING_SCHEMA_VERSION:
                if not i_append:
                    problem = "schema_version", "2 (interleaving) is not read without the interleaved columns"
                else:
                    _interleaved(x, i_append)
            if problem is not None:
                problems[f"Exposure.{problem[0]}", problem[1]] += 1
                continue
            x_id(x.event_id)
            x_exp(x.experiment_key)
            x_var(x.variant_key)
            x_user(x.user_id)
            x_ts(x.event_time_ms)
        elif kind == "outcome":
            o = event.outcome
            problem = received_event_problem(o)
            if problem is not None:
                problems[f"Outcome.{problem[0]}", problem[1]] += 1
                continue
            # each read builds anew: read once
            event_id, user_id, metric, ts = o.event_id, o.user_id, o.metric, o.event_time_ms
            o_id(event_id)
            o_user(user_id)
            o_metric(metric)
            o_ts(ts)
            o_value(o.value)
            # an item outcome names a request and an item (0 is one); without an item it credits no arm
            if r_append is not None and o.HasField("item_id") and (request_id := o.request_id):
                r_id, r_user, r_request, r_item, r_metric, r_ts = r_append
                r_id(event_id)
                r_user(user_id)
                r_request(request_id)
                r_item(o.item_id)
                r_metric(metric)
                r_ts(ts)
        else:
            problems["Event.payload", "is not set"] += 1
    return _count_rejected(problems, where, offset)


def _count_rejected(problems: collections.Counter[tuple[str, str]], where: str, offset: int | None) -> int:
    """Count the events of one record that readers skip, per field at fault, and warn once for the record (the
    reasons name fields, never values); returns how many."""
    if not problems:
        return 0
    for (field, _), n in problems.items():
        EVENTS_REJECTED.labels("invalid", field).inc(n)
    rejected = sum(problems.values())
    log.warning(
        "%s: skipped %d events that producers would not send: %s",
        _place(where, offset),
        rejected,
        ", ".join(f"{field} {reason} ({n})" for (field, reason), n in problems.items()),
    )
    return rejected


class AnalyticsConsumer:
    """Consumes exposures and outcomes into an EventStore.

    Args:
        bootstrap_servers: Kafka cluster.
        store: where state and applied offsets live (the source of truth for where to resume).
        group_id: consumer group; several processes in one group split the partitions.
        topics: topics to read (exposures and outcomes by default).
        commit_every_events: commit once this many events are waiting...
        commit_interval_s: ...or this long after the previous commit.
        session_timeout_ms: group session timeout.
        lag_interval_s: how often ``run`` refreshes the lag gauge.
        kafka_config: extra ``KafkaConsumer`` settings.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        store: EventStore,
        *,
        group_id: str = "mtrank-analytics",
        topics: Sequence[str] = (EXPOSURES_TOPIC, OUTCOMES_TOPIC),
        commit_every_events: int = 200_000,
        commit_interval_s: float = 2.0,
        session_timeout_ms: int = 10_000,
        lag_interval_s: float = 5.0,
        kafka_config: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.lag_interval_s = lag_interval_s
        self.topics = tuple(topics)
        self.commit_every_events = commit_every_events
        self.commit_interval_s = commit_interval_s
        self.consumer = Consumer(
            bootstrap_servers, group_id, session_timeout_ms=session_timeout_ms, kafka_config=kafka_config
        )
        self.checkpoint = Checkpoint(store, self.consumer)
        self.events_applied = 0
        self.records_seen = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._warned: set[TopicPartition] = set()
        self._last_commit = time.monotonic()
        self._durable: dict[TopicPartition, int] = {}  # per assigned partition: next offset not yet in the store
        # per partition, the first offset jump read and not checked yet: (offset expected, offset read)
        self._jumps: dict[TopicPartition, tuple[int, int]] = {}

    # kafka-python 3 runs the rebalance callbacks on its IO thread, concurrently with poll_once on the caller's
    # thread: the checkpoint is guarded by a lock, and the callbacks make no blocking Kafka calls.

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        # The store, not Kafka's committed offset, decides where to resume: a new or rebuilt store starts from
        # the beginning even when the group has committed offsets.
        with self._lock:
            applied = resume_points(self.store.offsets())
            fresh = []
            for tp in partitions:
                generation, last = applied.get(tp, (0, None))
                self.checkpoint.start_partition(tp, last, generation)
                self._durable[tp] = 0 if last is None else last + 1
                if last is None:
                    fresh.append(tp)
                else:
                    self.consumer.seek(tp, last + 1)
            self.consumer.seek_to_beginning(fresh)
        log.info("assigned %s", sorted(partitions))

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        # State becomes durable before another member takes the partitions; the Kafka commit is skipped here
        # (a blocking call is not allowed on the IO thread, and the stored offsets decide where reading resumes).
        with self._lock:
            self._persist_locked()
            for tp in partitions:
                self.checkpoint.drop_partition(tp)
                self._durable.pop(tp, None)
                with contextlib.suppress(KeyError):  # no series until the first lag update
                    CONSUMER_LAG.remove(tp.topic, str(tp.partition))
        log.info("revoked %s", sorted(partitions))

    def _persist_locked(self) -> dict[TopicPartition, int]:
        n = self.checkpoint.size
        offsets = self.checkpoint.persist()
        self._durable.update({tp: offset + 1 for tp, offset in offsets.items() if tp in self._durable})
        self.events_applied += n
        self._last_commit = time.monotonic()
        return offsets

    def commit(self) -> None:
        """Make everything processed so far durable (store), then commit it to Kafka."""
        with self._lock:
            offsets = self._persist_locked()
        self.checkpoint.commit_to_kafka(offsets)  # outside the lock: the IO thread may need it meanwhile

    def poll_once(self, timeout_ms: int = 200) -> int:
        """Poll, add the new records to the checkpoint, commit when due; returns events added."""
        batches = self.consumer.poll(timeout_ms)
        added = 0
        cp = self.checkpoint
        with self._lock:
            rewritten = cp.rewritten_partitions()
            if rewritten:  # the broker lost its log: persist what was read, then read those partitions again
                self._persist_locked()
                for tp, end in rewritten.items():
                    cp.reset_partition(tp, end)
                self._persist_locked()  # the new generations are durable before any of their records is read
            for tp, records in batches.items():
                if not cp.owns(tp) or tp in rewritten:
                    continue  # revoked since the fetch (the new owner reads them), or from before a reset
                last_offset = None
                expected = cp.next_offset(tp)  # None: nothing read yet, reading starts where the log starts
                where = f"{tp.topic}[{tp.partition}]"  # once per partition: a record's place is formatted
                for record in records:  # only when a warning names it
                    if cp.is_applied(tp, record.offset):
                        # We seek past the applied offset on assignment, so this means the log was rewritten (a
                        # broker that lost its data): skipping keeps the state consistent with its offsets.
                        RECORDS_REPLAYED.inc()
                        if tp not in self._warned:
                            self._warned.add(tp)
                            log.warning(
                                "%s[%d]: offset %d is already applied; was the topic recreated?",
                                *tp,
                                record.offset,
                            )
                        continue
                    if expected is not None and record.offset > expected:
                        self._jumps.setdefault(tp, (expected, record.offset))  # the first one counts
                    expected = record.offset + 1
                    before = cp.size
                    decode_into(
                        record.value,
                        cp.exposures,
                        cp.outcomes,
                        cp.interleaved,
                        cp.item_outcomes,
                        where,
                        record.offset,
                    )
                    added += cp.size - before
                    last_offset = record.offset
                self.records_seen += len(records)
                if last_offset is not None:
                    cp.set_offset(tp, last_offset)
            due = time.monotonic() - self._last_commit >= self.commit_interval_s
            commit_now = cp.size >= self.commit_every_events or (due and not cp.empty)
        if added:
            EVENTS_CONSUMED.inc(added)
        if commit_now:
            self.commit()
        if self._jumps:
            self._count_expired()
        if rewritten:
            self.update_lag()  # the lag gauge shows the records to read again at once
        return added

    def _count_expired(self) -> None:
        """Count and log the records Kafka deleted before they were read, at the offset jumps polls saw.

        A jump alone does not tell: a transaction marker skips an offset too. The log start does, so the
        broker is asked for it (outside the lock: a round trip); when it does not answer, the jumps wait for
        the next poll (a retriable error) or are logged as unchecked.
        """
        jumps = dict(self._jumps)
        try:
            starts = self.consumer.log_starts(list(jumps))
        except KafkaError as exc:
            if exc.retriable:
                return
            log.warning("cannot ask Kafka where the logs of %s start (%s): the offsets skipped there are not "
                        "checked for retention", sorted(jumps), exc)  # fmt: skip
            starts = {}
        for tp, (expected, first_read) in jumps.items():
            self._jumps.pop(tp, None)
            if tp not in starts:
                continue
            lost = records_lost_to_retention(expected, first_read, starts[tp])
            if not lost:
                log.debug(
                    "%s[%d]: offsets %d to %d were skipped, at or above the log start %d (a transaction "
                    "marker or compaction): nothing lost",
                    *tp,
                    expected,
                    first_read - 1,
                    starts[tp],
                )
                continue
            RECORDS_EXPIRED.labels(tp.topic, str(tp.partition)).inc(lost)
            log.warning(
                "%s[%d]: %d records (offsets %d to %d) were deleted by Kafka before they were read "
                "(retention shorter than the consumer's downtime or lag): their events are not in the store",
                *tp,
                lost,
                expected,
                expected + lost - 1,
            )

    def update_lag(self) -> dict[TopicPartition, int]:
        """Refresh the lag gauge (high watermark minus the next offset not yet durable); returns it per partition
        whose high watermark is known (a partition not fetched yet has none)."""
        with self._lock:
            durable = dict(self._durable)
        lag = {}
        for tp, next_offset in durable.items():
            end = self.consumer.highwater(tp)
            if end is not None:
                lag[tp] = max(end - next_offset, 0)
                CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag[tp])
        return lag

    def subscribe(self) -> None:
        """Join the consumer group (``run`` does this; call it yourself when driving ``poll_once``)."""
        self.consumer.subscribe(self.topics, self._on_assign, self._on_revoke)

    def run(self, max_seconds: float | None = None, idle_exit_s: float | None = None) -> None:
        """Consume until ``stop()`` (or ``max_seconds``; or ``idle_exit_s`` without new events), then commit."""
        self.subscribe()
        start = last_event = last_lag = time.monotonic()
        retry_s: float | None = None  # set while Kafka does not answer
        try:
            while not self._stop.is_set():
                try:
                    added = self.poll_once()
                except KafkaError as exc:  # the deadlines below still apply while Kafka is away
                    if not exc.retriable:
                        raise
                    retry_s, added = self._wait_for_kafka(exc, retry_s), 0
                else:
                    if retry_s is not None:
                        log.info("Kafka answers again; consuming")
                        retry_s = None
                if added or not self.checkpoint.assigned:
                    # Idle time counts only while partitions are assigned: a slow group join is not idleness.
                    last_event = time.monotonic()
                now = time.monotonic()
                if now - last_lag >= self.lag_interval_s:
                    self.update_lag()
                    last_lag = now
                if max_seconds is not None and now - start >= max_seconds:
                    break
                if idle_exit_s is not None and now - last_event >= idle_exit_s:
                    break
            self.commit()
        except BaseException:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001 - the error that stopped the loop is the one to raise
                log.exception("closing the Kafka consumer failed too, after the error raised below")
            raise
        self.consumer.close()

    def _wait_for_kafka(self, exc: KafkaError, retry_s: float | None) -> float:
        """Count a poll that failed because Kafka did not answer (a broker down or restarting), warn once per
        outage, and wait before the next poll; the checkpoint keeps what was read. Returns the wait used."""
        BROKER_UNREACHABLE.inc()
        if retry_s is None:
            log.warning("Kafka does not answer (%s); retrying until it does", exc)
            retry_s = RETRY_FIRST_S
        else:
            retry_s = min(2 * retry_s, RETRY_MAX_S)
        self._stop.wait(retry_s)
        return retry_s

    def stop(self) -> None:
        """Ask ``run`` to commit and return (thread- and signal-safe)."""
        self._stop.set()
