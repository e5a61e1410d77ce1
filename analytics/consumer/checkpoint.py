"""Checkpoint: the events and offsets processed since the last commit, made durable in a fixed order.

Offsets mean something only within one incarnation of a partition's log. When a broker loses its data (an
in-memory broker restarted, a topic deleted and recreated, an unclean leader election) the log starts again at
offset 0 below the offsets already stored, and resuming from the stored offset would skip every new record.
``reset_partition`` starts a new *log generation*: its offsets are stored under their own key,
``TopicPartition("<topic>#<generation>", partition)`` (``#`` cannot occur in a Kafka topic name), so they never
conflict with the old ones, and any ``EventStore`` records the reset in the same transaction as the first
events of the new log, with nothing store-specific. ``resume_points`` reads the newest generation back.
"""

from __future__ import annotations

import logging

from kafka.errors import KafkaError
from prometheus_client import Counter

from analytics.consumer.exceptions import CheckpointOffsetBackwards
from analytics.consumer.kafka_consumer import Consumer
from analytics.store.base import (
    EventStore,
    ExposureColumns,
    InterleavedColumns,
    ItemOutcomeColumns,
    OutcomeColumns,
    TopicPartition,
)
from analytics.store.exceptions import OffsetBackwards

log = logging.getLogger(__name__)

_GENERATION_SEPARATOR = "#"

_WRITE_ATTEMPTS = 3
"""Tries of a checkpoint write whose offsets other consumers keep overtaking (see ``Checkpoint.persist``)."""

OFFSETS_OVERTAKEN = Counter(
    "mtrank_analytics_offsets_overtaken",
    "Checkpoint writes that left a partition's offset alone: another consumer had stored a later one",
    ["topic", "partition"],
)
LOG_RESETS = Counter(
    "mtrank_analytics_log_resets",
    "Partitions read again from their start because their log now ends below the offsets already applied",
    ["topic", "partition"],
)


def stored_key(tp: TopicPartition, generation: int) -> TopicPartition:
    """The key under which the offsets of ``tp``'s log generation ``generation`` are stored."""
    if generation == 0:
        return tp
    return TopicPartition(f"{tp.topic}{_GENERATION_SEPARATOR}{generation}", tp.partition)


def resume_points(stored: dict[TopicPartition, int]) -> dict[TopicPartition, tuple[int, int]]:
    """``(generation, last applied offset)`` of the newest log generation of each partition in ``stored``."""
    points: dict[TopicPartition, tuple[int, int]] = {}
    for key, offset in stored.items():
        topic, separator, generation = key.topic.rpartition(_GENERATION_SEPARATOR)
        if not separator or not generation.isdigit():
            topic, generation = key.topic, "0"
        tp = TopicPartition(topic, key.partition)
        point = (int(generation), offset)
        if tp not in points or point > points[tp]:
            points[tp] = point
    return points


class Checkpoint:
    """Collects state increments per poll and commits them atomically with their offsets.

    Not thread-safe: the owner serialises access (the analytics consumer holds a lock, because kafka-python
    runs rebalance callbacks on its IO thread).
    """

    def __init__(self, store: EventStore, consumer: Consumer | None) -> None:
        self._store = store
        self._consumer = consumer
        self.exposures = ExposureColumns()
        self.outcomes = OutcomeColumns()
        self.interleaved = InterleavedColumns()  # the lists of the version 2 exposures among ``exposures``
        self.item_outcomes = ItemOutcomeColumns()  # the outcomes among ``outcomes`` that name a request
        self._offsets: dict[TopicPartition, int] = {}
        self._last: dict[TopicPartition, int | None] = {}
        self._generation: dict[TopicPartition, int] = {}

    def start_partition(self, tp: TopicPartition, last_applied: int | None, generation: int = 0) -> None:
        """Register a newly assigned partition, the last offset already in the store (None: none) and the log
        generation that offset belongs to (see ``resume_points``)."""
        self._last[tp] = last_applied
        self._generation[tp] = generation

    def drop_partition(self, tp: TopicPartition) -> None:
        """Forget a revoked partition (call after ``persist``): its records are no longer ours to apply."""
        self._last.pop(tp, None)
        self._offsets.pop(tp, None)
        self._generation.pop(tp, None)

    def next_offset(self, tp: TopicPartition) -> int | None:
        """The offset of the next record expected on ``tp`` (None when nothing was applied in its generation)."""
        last = self._last.get(tp)
        return None if last is None else last + 1

    def rewritten_partitions(self) -> dict[TopicPartition, int]:
        """Partitions whose log now ends below the next offset expected, with that end.

        The end is the high watermark of the last fetch (Tansu answers ListOffsets(latest) wrongly, fetches
        right). Within one log a high watermark never falls below an offset already read, so this means the
        log was rewritten. A new log that has already grown past the stored offset when the consumer first
        fetches from it cannot be told apart by offsets alone.
        """
        if self._consumer is None:
            return {}
        rewritten = {}
        for tp, last in self._last.items():
            if last is None:
                continue
            end = self._consumer.highwater(tp)
            if end is not None and end <= last:
                rewritten[tp] = end
        return rewritten

    def reset_partition(self, tp: TopicPartition, log_end: int) -> None:
        """The policy for a rewritten log: warn, count (``mtrank_analytics_log_resets_total``), start a new log
        generation and read the partition again from its start; events already stored are deduplicated by event
        id. Call ``persist`` first: pending offsets belong to the old generation.

        Raises:
            RuntimeError: offsets of ``tp`` are still pending.
        """
        if tp in self._offsets:
            raise RuntimeError(f"{tp.topic}[{tp.partition}]: persist the checkpoint before resetting it")
        log.warning(
            "%s[%d]: the log ends at offset %d, below offset %s already applied: the broker lost its data or the "
            "topic was recreated. Reading the partition again from its start (stored events are deduplicated "
            "by event id).",
            tp.topic,
            tp.partition,
            log_end,
            self._last.get(tp),
        )
        LOG_RESETS.labels(tp.topic, str(tp.partition)).inc()
        self._generation[tp] = self._generation.get(tp, 0) + 1
        # Offset -1 (nothing applied yet) under the new generation's key, made durable by the next ``persist``:
        # a rebalance before the new log's first events are stored then resumes in this generation instead of
        # comparing the old generation's offsets with the new log and resetting it a second time.
        self._offsets[tp] = -1
        self._last[tp] = -1
        if self._consumer is not None:
            self._consumer.seek_to_beginning([tp])

    @property
    def assigned(self) -> bool:
        """True while any partition is assigned to this checkpoint's consumer."""
        return bool(self._last)

    def owns(self, tp: TopicPartition) -> bool:
        """True while ``tp`` is assigned to this checkpoint's consumer."""
        return tp in self._last

    def is_applied(self, tp: TopicPartition, offset: int) -> bool:
        """True when the record at ``offset`` is already in the store or this checkpoint (a replay)."""
        last = self._last.get(tp)
        return last is not None and offset <= last

    def set_offset(self, tp: TopicPartition, offset: int) -> None:
        """Record that everything up to ``offset`` on ``tp`` has been added to this checkpoint.

        Raises:
            CheckpointOffsetBackwards: ``offset`` is not after the last one seen for ``tp``.
        """
        last = self._last.get(tp)
        if last is not None and offset <= last:
            raise CheckpointOffsetBackwards(
                f"{tp.topic}[{tp.partition}]: offset {offset} is not after {last}"
            )
        self._offsets[tp] = offset
        self._last[tp] = offset

    @property
    def size(self) -> int:
        """Events waiting for the next commit."""
        return len(self.exposures) + len(self.outcomes)

    @property
    def empty(self) -> bool:
        """Nothing to commit."""
        return not self._offsets

    def persist(self) -> dict[TopicPartition, int]:
        """Steps 1 and 3 of ``commit``: make the state durable, start afresh; returns the offsets written.

        Another consumer may have stored later offsets of a partition meanwhile: this one stalled past its
        session and the group gave the partition to another member, or another group writes to the same
        store. The events are stored all the same (counted once: the store deduplicates them by event id),
        but only the offsets this checkpoint is the latest for (``mtrank_analytics_offsets_overtaken_total``);
        reading goes on as before.

        Raises:
            OffsetBackwards: other consumers still stored later offsets after ``_WRITE_ATTEMPTS`` tries.
        """
        if self.empty:
            return {}
        keys = {tp: stored_key(tp, self._generation.get(tp, 0)) for tp in self._offsets}
        offsets = self._offsets
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                self._store.apply(
                    self.exposures,
                    self.outcomes,
                    {keys[tp]: offset for tp, offset in offsets.items()},
                    interleaved=self.interleaved,
                    item_outcomes=self.item_outcomes,
                )
                break
            except OffsetBackwards:
                if attempt == _WRITE_ATTEMPTS:
                    raise
                offsets = self._not_overtaken(offsets, keys)
        log.debug("checkpoint: %d events, offsets %s", self.size, offsets)
        self.exposures, self.outcomes, self._offsets = ExposureColumns(), OutcomeColumns(), {}
        self.interleaved, self.item_outcomes = InterleavedColumns(), ItemOutcomeColumns()
        return offsets

    def _not_overtaken(
        self, offsets: dict[TopicPartition, int], keys: dict[TopicPartition, TopicPartition]
    ) -> dict[TopicPartition, int]:
        """``offsets`` without those behind the ones the store holds now (warned about and counted)."""
        stored = self._store.offsets()
        kept = {}
        for tp, offset in offsets.items():
            theirs = stored.get(keys[tp])
            if theirs is None or offset >= theirs:
                kept[tp] = offset
                continue
            OFFSETS_OVERTAKEN.labels(tp.topic, str(tp.partition)).inc()
            log.warning(
                "%s[%d]: another consumer stored offset %d, past offset %d this one holds events up to (it "
                "stalled past its session and the group moved the partition, or another group writes to this "
                "store): storing the events, keeping the later offset",
                tp.topic,
                tp.partition,
                theirs,
                offset,
            )
        return kept

    def commit_to_kafka(self, offsets: dict[TopicPartition, int]) -> None:
        """Step 2 of ``commit``: tell Kafka ``offset + 1`` per partition (informational: the store decides)."""
        if self._consumer is None or not offsets:
            return
        try:
            self._consumer.commit({tp: off + 1 for tp, off in offsets.items()})
        except KafkaError as exc:  # harmless: the stored offsets decide where reading resumes
            log.warning("Kafka offset commit failed (%s); the store already holds the offsets", exc)

    def commit(self) -> None:
        """Make the checkpoint durable, in this order:

        1. write the events and the last offset per partition to the store in one transaction
           (the state is durable; a crash after this replays nothing twice: the stored offsets skip it);
        2. commit ``offset + 1`` per partition to Kafka (only now; a crash between 1 and 2 re-reads records
           that the stored offsets then skip);
        3. start a fresh, empty checkpoint (done with step 1, so new records can be added during step 2).
        """
        self.commit_to_kafka(self.persist())
