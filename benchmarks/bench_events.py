"""Throughput of the analytics consumer: events/s from Kafka into persisted state, one consumer process.

Runs against the real embedded broker. The same workload is consumed four ways, side by side in one run:

1. kafka-python alone, one event per record (poll only, no decoding): the client library's per-record ceiling;
2. the analytics consumer into the default store (DuckDB, Parquet parts), one event per record;
3. kafka-python alone, batched records (poll + EventBatch decoding);
4. the analytics consumer into the default store, batched records (``EventBatch`` of --per-record events): the
   real path, decoded into columns and committed as Parquet parts with the offsets (compactions included).

User ids come in random order (exposures shuffled, outcomes of random users). Timing starts at the first record
received (group joins excluded) and stops when every event is durable in the store (for 2 and 4: the final
checkpoint committed). Target (issue 12): >= 150,000 events/s per consumer process across >= 5M events. Usage::

    flock /tmp/mtrank-bench.lock .venv/bin/python benchmarks/bench_events.py --events 5000000 \
        --users 1000000 --out benchmarks/results/events.md
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.consumer.processor import AnalyticsConsumer  # noqa: E402
from analytics.events.messages import decode_batch, make_exposure, make_outcome  # noqa: E402
from analytics.events.producer import EventProducer  # noqa: E402
from analytics.kafka.broker import EmbeddedBroker  # noqa: E402
from analytics.store import DuckDBEventStore  # noqa: E402

log = logging.getLogger("bench_events")


def produce(bootstrap: str, prefix: str, n_events: int, users: int, per_record: int, seed: int) -> None:
    """Exposures for ``users`` users, then outcomes up to ``n_events`` events, ``per_record`` events per record."""
    rng = random.Random(seed)
    with EventProducer(
        bootstrap,
        exposures_topic=f"{prefix}.exposures",
        outcomes_topic=f"{prefix}.outcomes",
        journal_path=None,
        buffer_size=n_events + 1,
        max_events_per_record=per_record,
        delivery_timeout_s=60,
    ) as producer:
        chunk = 20_000
        with tqdm(total=n_events, desc=f"produce {prefix}", unit="ev", leave=False) as bar:
            order = list(range(users))
            rng.shuffle(order)  # user ids in random order
            for start in range(0, users, chunk):
                batch = [
                    make_exposure(
                        f"u{u}", "bench", rng.choice(("control", "treatment")), event_time_ms=1_000 + u
                    )
                    for u in order[start : start + chunk]
                ]
                producer.send_exposures(batch)
                bar.update(len(batch))
            for start in range(0, n_events - users, chunk):
                batch = [
                    make_outcome(f"u{rng.randrange(users)}", "click", 1.0, event_time_ms=2_000 + start + i)
                    for i in range(min(chunk, n_events - users - start))
                ]
                producer.send_outcomes(batch)
                bar.update(len(batch))
            if not producer.flush(600):
                raise RuntimeError("producing the benchmark data did not finish")


def raw_consume(bootstrap: str, prefix: str, n_events: int, decode: bool) -> tuple[float, float, int, int]:
    """kafka-python alone: (wall s, CPU s, records, events) to read every record (events counted when decoding)."""
    topics = [f"{prefix}.exposures", f"{prefix}.outcomes"]
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=2000, fetch_max_wait_ms=100,
        max_partition_fetch_bytes=4 << 20,
    )  # fmt: skip
    tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records = events = 0
    start = cpu_start = None
    deadline = time.monotonic() + 600
    with tqdm(total=n_events, desc=f"kafka-python {prefix}", unit="ev", leave=False) as bar:
        while events < n_events and time.monotonic() < deadline:
            # a poll that returns data may have waited for it: counted (conservative)
            before, cpu_before = time.perf_counter(), time.process_time()
            for recs in consumer.poll(timeout_ms=200).values():
                start = start or before
                cpu_start = cpu_start or cpu_before
                records += len(recs)
                if decode:
                    got = sum(len(decode_batch(r.value).events) for r in recs)
                else:
                    got = len(recs)  # one event per record
                events += got
                bar.update(got)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    cpu = time.process_time() - (cpu_start or time.process_time())
    consumer.close()
    return elapsed, cpu, records, events


def pipeline_consume(
    bootstrap: str, prefix: str, n_events: int, store_path: Path
) -> tuple[float, float, int, int]:
    """The analytics consumer into the default store: (wall s, CPU s to durable state, records seen, events)."""
    store = DuckDBEventStore(store_path)
    app = AnalyticsConsumer(
        bootstrap, store, group_id=f"bench-{prefix}", topics=(f"{prefix}.exposures", f"{prefix}.outcomes"),
        session_timeout_ms=6_000,
    )  # fmt: skip
    app.subscribe()
    start = cpu_start = None
    done = 0
    deadline = time.monotonic() + 600
    with tqdm(total=n_events, desc=f"analytics consumer {prefix}", unit="ev", leave=False) as bar:
        while done < n_events and time.monotonic() < deadline:
            before, cpu_before = time.perf_counter(), time.process_time()
            added = app.poll_once(timeout_ms=200)
            if added:
                start = start or before
                cpu_start = cpu_start or cpu_before
                done += added
                bar.update(added)
        app.commit()
    elapsed = time.perf_counter() - (start or time.perf_counter())
    cpu = time.process_time() - (cpu_start or time.process_time())
    counts = store.counts()
    app.consumer.close()
    store.close()
    if counts["outcomes"] + counts["exposed_users"] != n_events:
        raise RuntimeError(f"store holds {counts}, expected {n_events} events")
    return elapsed, cpu, app.records_seen, n_events


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=500_000, help="events in the batched run")
    parser.add_argument(
        "--per-record-events", type=int, default=100_000, help="events in the 1-per-record runs"
    )
    parser.add_argument(
        "--per-record", type=int, default=500, help="events per Kafka record in the batched run"
    )
    parser.add_argument("--users", type=int, default=50_000, help="exposed users (one exposure each)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    small_users = min(args.users, args.per_record_events // 5)
    results = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(topics=(), partitions=args.partitions) as broker,
    ):
        for prefix in ("single", "batched"):
            broker.create_topics([f"{prefix}.exposures", f"{prefix}.outcomes"])
        t = time.perf_counter()
        produce(broker.bootstrap, "single", args.per_record_events, small_users, 1, seed=1)
        produce_single = time.perf_counter() - t
        t = time.perf_counter()
        produce(broker.bootstrap, "batched", args.events, args.users, args.per_record, seed=2)
        produce_batched = time.perf_counter() - t
        results["raw_single"] = raw_consume(broker.bootstrap, "single", args.per_record_events, decode=False)
        results["app_single"] = pipeline_consume(
            broker.bootstrap, "single", args.per_record_events, Path(tmp) / "a"
        )
        results["raw_batched"] = raw_consume(broker.bootstrap, "batched", args.events, decode=True)
        results["app_batched"] = pipeline_consume(
            broker.bootstrap, "batched", args.events, Path(tmp) / "b"
        )

    rows = [
        ("kafka-python poll only, 1 event/record", results["raw_single"]),
        ("analytics consumer -> DuckDB store, 1 event/record", results["app_single"]),
        (f"kafka-python poll + decode, {args.per_record} events/record", results["raw_batched"]),
        (f"analytics consumer -> DuckDB store, {args.per_record} events/record", results["app_batched"]),
    ]
    lines = [
        "| path | events | records | wall s | events/s (wall) | records/s (wall) | CPU s | events/CPU-s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (wall, cpu, records, events) in rows:
        lines.append(
            f"| {name} | {events:,} | {records:,} | {wall:.2f} | {events / wall:,.0f} | {records / wall:,.0f} "
            f"| {cpu:.2f} | {events / cpu:,.0f} |"
        )
    wall_b, cpu_b, _, ev_b = results["app_batched"]
    wall_s, cpu_s, _, ev_s = results["app_single"]
    raw_wall, raw_cpu, raw_records, _ = results["raw_single"]
    summary = [
        f"Batched pipeline: {ev_b / wall_b:,.0f} events/s wall-clock and {ev_b / cpu_b:,.0f} events per CPU-second "
        f"of the consumer process into the durable default store (target >= 150,000/s: "
        f"{'met' if ev_b / wall_b >= 150_000 else 'NOT met'} wall-clock, "
        f"{'met' if ev_b / cpu_b >= 150_000 else 'NOT met'} per CPU-second). "
        f"That is {(ev_b / wall_b) / (ev_s / wall_s):.1f}x the same pipeline with one event per record and "
        f"{(ev_b / wall_b) / (raw_records / raw_wall):.1f}x kafka-python's bare per-record poll rate "
        f"({raw_records / raw_wall:,.0f} records/s wall, {raw_records / raw_cpu:,.0f} per CPU-second).",
        f"Producing (setup, not measured above): {args.per_record_events:,} single-event records in "
        f"{produce_single:.1f} s, {args.events:,} batched events in {produce_batched:.1f} s.",
        "CPU seconds are those of this process (consumer threads; the broker is a separate process). On a shared, "
        "overloaded machine the wall-clock rate mostly measures how much CPU the process was given.",
    ]
    crc = "C crc32c" if importlib.util.find_spec("crc32c") else "pure-Python crc32c (pip install crc32c!)"
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"1-min load average {os.getloadavg()[0]:.1f} at the end, kafka-python with {crc}"
    )
    report = "\n".join(
        ["# Event pipeline throughput (benchmarks/bench_events.py)", "", f"Machine: {machine}.", "",
         f"Command: `python benchmarks/bench_events.py --events {args.events} --per-record-events "
         f"{args.per_record_events} --per-record {args.per_record} --users {args.users} "
         f"--partitions {args.partitions}`", "", *lines, "", *summary, ""]
    )  # fmt: skip
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
