"""Checkpoint: the events and offsets processed since the last commit, made durable in a fixed order."""

from __future__ import annotations

import logging

from kafka.errors import KafkaError

from analytics.consumer.exceptions import CheckpointOffsetBackwards
from analytics.consumer.kafka_consumer import Consumer
from analytics.store.base import EventStore, ExposureColumns, OutcomeColumns, TopicPartition

log = logging.getLogger(__name__)


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
        self._offsets: dict[TopicPartition, int] = {}
        self._last: dict[TopicPartition, int | None] = {}

    def start_partition(self, tp: TopicPartition, last_applied: int | None) -> None:
        """Register a newly assigned partition and the last offset already in the store (None: none)."""
        self._last[tp] = last_applied

    def drop_partition(self, tp: TopicPartition) -> None:
        """Forget a revoked partition (call after ``persist``): its records are no longer ours to apply."""
        self._last.pop(tp, None)
        self._offsets.pop(tp, None)

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
        """Steps 1 and 3 of ``commit``: make the state durable, start afresh; returns the offsets written."""
        if self.empty:
            return {}
        offsets = self._offsets
        self._store.apply(self.exposures, self.outcomes, offsets)
        log.debug("checkpoint: %d events, offsets %s", self.size, offsets)
        self.exposures, self.outcomes, self._offsets = ExposureColumns(), OutcomeColumns(), {}
        return offsets

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
