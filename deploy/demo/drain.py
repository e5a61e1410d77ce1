"""The demo's drain step: wait until the analytics consumer has stored every record the producers sent.

Once the producers have flushed (the simulator's outcomes acknowledged, the ranker stopped gracefully), the
topics' end offsets are final. The consumer commits a partition's offset to Kafka only after the events before
it are durable in its store, so when the group's committed offsets reach those end offsets the store holds
every event and the report can be built. The wait ends there, not after a fixed time; it is capped, and a run
that hits the cap says how many records were left instead of reporting on part of them silently.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

logger = logging.getLogger(__name__)

POLL_S = 0.25
"""How often the committed offsets are read while waiting (one OffsetFetch each)."""
PROGRESS_EVERY_S = 1.0
"""How often ``wait_until_consumed`` reports the records left."""

Progress = Callable[[int, int], None]
"""Called with (records left, records in all) while the consumer is behind."""


class DrainError(RuntimeError):
    """Kafka could not tell where the topics end or what the consumer group committed."""


@dataclass(frozen=True)
class Drain:
    """Where the consumer group stood against the topics' end offsets when the wait ended."""

    ends: Mapping[TopicPartition, int]
    committed: Mapping[TopicPartition, int] = field(default_factory=dict)

    @property
    def left(self) -> dict[TopicPartition, int]:
        """Records not yet stored, per partition that has any."""
        behind = {tp: end - self.committed.get(tp, 0) for tp, end in self.ends.items()}
        return {tp: n for tp, n in sorted(behind.items()) if n > 0}

    @property
    def records(self) -> int:
        """Records the topics hold (their end offsets: the demo's broker never deletes any)."""
        return sum(self.ends.values())

    @property
    def records_left(self) -> int:
        return sum(self.left.values())

    @property
    def caught_up(self) -> bool:
        """Whether the store holds every record: the group committed the end offset of each partition."""
        return not self.left

    def shortfall(self, waited_s: float) -> str:
        """The warning a run that hit the cap prints: what was left, where, and what that means for the
        report."""
        where = ", ".join(f"{tp.topic}[{tp.partition}] {n}" for tp, n in self.left.items())
        return (
            f"the analytics consumer had not stored every event after {waited_s:g} s: {self.records_left} "
            f"of {self.records} Kafka records were left unconsumed ({where}); the report covers only what it "
            "stored and may be incomplete (a longer --drain-timeout waits for the rest)"
        )

    def to_dict(self) -> dict[str, object]:
        """For the demo's summary.json."""
        return {
            "caught_up": self.caught_up,
            "records": self.records,
            "records_left": self.records_left,
            "left": {f"{tp.topic}[{tp.partition}]": n for tp, n in self.left.items()},
        }


def end_offsets(bootstrap: str, topics: Sequence[str], timeout_s: float = 30.0) -> dict[TopicPartition, int]:
    """Each partition's end offset (the offset the next record will get), read from fetch responses.

    ``KafkaConsumer.end_offsets`` (ListOffsets) is only a first guess: the embedded Tansu broker answers it
    with its last batch's base offset + 1 (1 for a partition holding one batch of 3 records). That guess is
    never past the end, so a fetch from it returns at most the last batch, and every fetch response carries
    the partition's true high watermark.

    Raises:
        DrainError: a topic's partitions or a high watermark were not known within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        tps = [TopicPartition(topic, p) for topic in topics for p in _partitions(consumer, topic, deadline)]
        consumer.assign(tps)
        for tp, guess in consumer.end_offsets(tps).items():
            consumer.seek(tp, guess)
        while (
            unknown := [tp for tp in tps if consumer.highwater(tp) is None]
        ) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)
        if unknown:
            raise DrainError(f"Kafka did not say where {sorted(unknown)} end within {timeout_s:g} s")
        return {tp: int(consumer.highwater(tp)) for tp in tps}
    except KafkaError as exc:
        raise DrainError(f"cannot read the end offsets of {', '.join(topics)}: {exc}") from exc
    finally:
        consumer.close()


def _partitions(consumer: KafkaConsumer, topic: str, deadline: float) -> list[int]:
    """``topic``'s partitions, once the client's metadata has them."""
    while not (parts := consumer.partitions_for_topic(topic)):
        if time.monotonic() >= deadline:
            raise DrainError(f"topic {topic} not found in Kafka's metadata")
        time.sleep(0.1)
    return sorted(parts)


def _committed_offsets(admin: KafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    """The offsets ``group`` committed (the next record to read), per partition it committed for."""
    offsets = admin.list_group_offsets(group).get(group, {})
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def wait_until_consumed(
    bootstrap: str,
    group: str,
    ends: Mapping[TopicPartition, int],
    timeout_s: float,
    progress: Progress | None = None,
) -> Drain:
    """Wait until ``group`` has committed ``ends`` on every partition, or ``timeout_s`` has passed.

    Returns where the group stood when the wait ended (``caught_up`` says which way it ended); ``progress``
    hears the records left every ``PROGRESS_EVERY_S`` while it is behind.

    Raises:
        DrainError: Kafka refused to read the committed offsets, or failed to until the cap.
    """
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=5000, client_id="mtrank-demo-drain"
        )
    except KafkaError as exc:
        raise DrainError(f"cannot reach Kafka at {bootstrap} to read the committed offsets: {exc}") from exc
    try:
        deadline = time.monotonic() + timeout_s
        next_report = time.monotonic()
        while True:
            try:
                drain = Drain(ends, _committed_offsets(admin, group))
            except KafkaError as exc:  # a retriable error (a coordinator moving, say) is tried again
                if not exc.retriable or time.monotonic() >= deadline:
                    raise DrainError(f"cannot read the committed offsets of group {group}: {exc}") from exc
                logger.info("reading the committed offsets of group %s failed (%s); retrying", group, exc)
                time.sleep(POLL_S)
                continue
            now = time.monotonic()
            if drain.caught_up or now >= deadline:
                return drain
            if progress is not None and now >= next_report:
                progress(drain.records_left, drain.records)
                next_report = now + PROGRESS_EVERY_S
            time.sleep(min(POLL_S, max(deadline - now, 0.0)))
    finally:
        admin.close()


def drain_consumer(
    bootstrap: str, topics: Sequence[str], group: str, timeout_s: float, stop_consumer: Callable[[], object]
) -> Drain:
    """The demo's drain step, once the producers have flushed: wait until ``group`` has stored every record
    ``topics`` hold (at most ``timeout_s``, saying each second how many are left), then ``stop_consumer``.

    A consumer that is stopped stores what it had read: after a cap, what it stored then counts too, and only
    what is still left is reported, as a warning on stderr that says what it means for the report.
    """
    ends = end_offsets(bootstrap, topics)
    print(f"  {sum(ends.values())} records in Kafka; waiting until the consumer has stored them all "
          f"(at most {timeout_s:g} s: --drain-timeout)", flush=True)  # fmt: skip
    drain = wait_until_consumed(bootstrap, group, ends, timeout_s, _print_progress)
    stop_consumer()
    if not drain.caught_up:
        drain = wait_until_consumed(bootstrap, group, ends, timeout_s=0)
    if drain.caught_up:
        print(f"  consumer: all {drain.records} records stored", flush=True)
    else:
        print(f"warning: {drain.shortfall(timeout_s)}", file=sys.stderr, flush=True)
    return drain


def _print_progress(left: int, records: int) -> None:
    print(f"  consumer: {records - left} of {records} records stored, {left} to go", flush=True)
