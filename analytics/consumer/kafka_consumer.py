"""A thin wrapper over kafka-python's KafkaConsumer: poll, commit and rebalance callbacks, nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata
from kafka import TopicPartition as KafkaTopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import Counter

from analytics.store.base import TopicPartition

log = logging.getLogger(__name__)

STALLED_REBALANCES = Counter(
    "mtrank_analytics_stalled_rebalances",
    "Rebalances kafka-python stopped driving (member left without partitions) that the consumer started again",
    ["group"],
)

PartitionsCallback = Callable[[list[TopicPartition]], None]

COMMIT_TIMEOUT_MS = 2_000
"""The longest a commit of offsets to Kafka waits for the broker. The commits are informational (the store's
offsets decide where reading resumes; one that fails is logged), and kafka-python otherwise waits its
request_timeout_ms, 30 s: with a broker that hangs (SIGSTOP: connections open, no answers) a consumer stopped
by SIGTERM spent 30.4 s in its final commit, past its pod's 30 s grace period, and was killed."""
CLOSE_TIMEOUT_MS = 2_000
"""The longest ``close`` waits for the broker to take the member out of the group (30 s otherwise, as above; a
member that did not leave is dropped after its session timeout). With ``COMMIT_TIMEOUT_MS``, Kafka holds up
a stop for at most 4 s, which leaves most of compose's default stop_grace_period (10 s) and of Kubernetes'
(30 s) to the store's final write (``tests/deploy`` checks the deployments' grace periods)."""


class _Listener(ConsumerRebalanceListener):
    def __init__(self, on_assign: PartitionsCallback, on_revoke: PartitionsCallback) -> None:
        self._on_assign = on_assign
        self._on_revoke = on_revoke

    def on_partitions_revoked(self, revoked: Sequence[KafkaTopicPartition]) -> None:
        self._on_revoke([TopicPartition(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: Sequence[KafkaTopicPartition]) -> None:
        self._on_assign([TopicPartition(tp.topic, tp.partition) for tp in assigned])


class Consumer:
    """Group consumer with manual commits (auto commit off: offsets follow durable state, never lead it).

    Args:
        bootstrap_servers: Kafka cluster.
        group_id: consumer group.
        session_timeout_ms: group session timeout (the embedded broker's joins take about half of it).
        heartbeat_interval_ms: heartbeat period (a third of the session timeout or less).
        kafka_config: extra ``KafkaConsumer`` settings.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        group_id: str,
        *,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int | None = None,
        client_id: str = "mtrank-analytics",
        kafka_config: dict[str, Any] | None = None,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "client_id": client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms or max(session_timeout_ms // 4, 100),
            "max_poll_records": 2000,
            "max_partition_fetch_bytes": 4 << 20,
            "fetch_max_wait_ms": 100,
        }
        config.update(kafka_config or {})
        self._group_id = group_id
        self._consumer = KafkaConsumer(**config)

    def subscribe(
        self, topics: Sequence[str], on_assign: PartitionsCallback, on_revoke: PartitionsCallback
    ) -> None:
        """Join the group for ``topics``; the callbacks run inside ``poll`` around each rebalance."""
        self._consumer.subscribe(list(topics), listener=_Listener(on_assign, on_revoke))

    def poll(
        self, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Fetched records per partition (empty dict when nothing arrived within ``timeout_ms``)."""
        self._restart_stalled_rebalance()
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return {TopicPartition(tp.topic, tp.partition): records for tp, records in batches.items()}

    def _restart_stalled_rebalance(self) -> None:
        """Start again a rebalance that kafka-python (3.0) would leave unfinished for good.

        ``poll`` resumes an unfinished JoinGroup/SyncGroup round only while the coordinator's ``need_rejoin()``
        holds. A rebalance started because partition metadata changed (a broker that came back empty and
        auto-created the topics with other partition counts) or because the subscription changed does not set
        the coordinator's rejoin flag, and the round itself makes ``need_rejoin()`` false again: the leader's
        assignment records the new metadata, the JoinGroup records the new subscription. When a ``poll``
        timeout expires while that round is in flight, its answer is never applied: the member stays
        REBALANCING, without partitions or heartbeats, however long it polls. (The Java client sets the flag
        in this case, KAFKA-9815.) Setting it here makes the next ``poll`` run the join again: one more
        rebalance, after which the assignment callbacks run as usual. Reaches into kafka-python's coordinator,
        which has no public accessor; ``tests/analytics/test_kafka_consumer.py`` pins the behaviour.
        """
        coordinator = self._consumer._coordinator
        if coordinator.rebalance_in_progress() and not coordinator.need_rejoin():
            STALLED_REBALANCES.labels(self._group_id).inc()
            log.warning(
                "group %s: kafka-python stopped driving an unfinished rebalance (no partitions assigned); "
                "joining the group again",
                self._group_id,
            )
            coordinator.request_rejoin()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Next record to fetch from ``tp``."""
        self._consumer.seek(KafkaTopicPartition(tp.topic, tp.partition), offset)

    def seek_to_beginning(self, tps: Sequence[TopicPartition]) -> None:
        """Read ``tps`` from their first record."""
        if tps:
            self._consumer.seek_to_beginning(*(KafkaTopicPartition(tp.topic, tp.partition) for tp in tps))

    def commit(self, next_offsets: Mapping[TopicPartition, int], timeout_ms: int = COMMIT_TIMEOUT_MS) -> None:
        """Commit ``next_offsets`` (offset of the next record to read) synchronously.

        Raises:
            KafkaError: the broker refused the commit or did not answer within ``timeout_ms``.
        """
        if next_offsets:
            self._consumer.commit(
                {
                    KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(off, "", -1)
                    for tp, off in next_offsets.items()
                },
                timeout_ms=timeout_ms,
            )

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end offset as of the last fetch response (None before the first fetch).

        Read from fetches rather than asked with ``end_offsets``: no broker round trip, and the embedded Tansu
        broker answers ListOffsets(latest) with a wrong offset (1 for a partition of 12 records) while its
        fetch responses carry the right high watermark.
        """
        return self._consumer.highwater(KafkaTopicPartition(tp.topic, tp.partition))

    def log_starts(self, tps: Sequence[TopicPartition], timeout_ms: int = 5_000) -> dict[TopicPartition, int]:
        """The first offset each partition's log still holds (retention moves it up): a broker round trip.

        Raises:
            KafkaError: the broker did not answer within ``timeout_ms``.
        """
        ktps = [KafkaTopicPartition(tp.topic, tp.partition) for tp in tps]
        starts = self._consumer.beginning_offsets(ktps, timeout_ms)
        return {TopicPartition(ktp.topic, ktp.partition): int(offset) for ktp, offset in starts.items()}

    def assignment(self) -> set[TopicPartition]:
        """Partitions currently assigned to this member."""
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def close(self, timeout_ms: int = CLOSE_TIMEOUT_MS) -> None:
        """Leave the group, waiting at most ``timeout_ms`` for the broker (no auto commit: offsets were
        committed with the state)."""
        self._consumer.close(autocommit=False, timeout_ms=timeout_ms)
