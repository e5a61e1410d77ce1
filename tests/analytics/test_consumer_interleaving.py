"""Interleaving exposures (schema version 2) and clicks through the real broker into the stores: the consumer keeps
their items, teams and arms, the credit equals the reference, and consuming the same events again counts once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from analytics.consumer.processor import AnalyticsConsumer, decode_into
from analytics.events.messages import (
    encode_exposure,
    encode_outcome,
    frame_batch,
    make_exposure,
    make_outcome,
)
from analytics.interleaving import Arm, Click, InterleavedExposure, preference_counts_at
from analytics.kafka.broker import EmbeddedBroker
from analytics.store import (
    DuckDBEventStore,
    EventStore,
    ExposureColumns,
    MemoryEventStore,
    OutcomeColumns,
)
from analytics.store.base import InterleavedColumns, ItemOutcomeColumns
from proto import events_pb2
from tests.analytics.test_consumer import SESSION_MS, _produce

ARMS = (("control", "mmoe", "1"), ("treatment", "mmoe+dml", "1"))


def interleaved_traffic(seed: int, users: int) -> tuple[list[events_pb2.Exposure], list[events_pb2.Outcome]]:
    """Users of experiment "il" with 1-3 interleaved feeds, retried feeds, clicks, double clicks, impressions,
    plus users of an A/B experiment whose clicks name their (not interleaved) requests."""
    rng = random.Random(seed)
    exposures, outcomes = [], []
    for u in range(users):
        user = f"u{u}"
        for r in range(rng.randint(1, 3)):
            request, ts = f"{user}-r{r}", 1_000_000 + rng.randrange(100_000)
            items = rng.sample(range(1, 200), 10)
            teams = [rng.randint(0, 1) for _ in items]
            shown = make_exposure(user, "il", "interleaved", request_id=request, item_ids=items, teams=teams,
                                  arms=ARMS, event_time_ms=ts)  # fmt: skip
            exposures.append(shown)
            if rng.random() < 0.2:  # a retried request: the same list logged again later
                again = make_exposure(user, "il", "interleaved", request_id=request, item_ids=items, teams=teams,
                                      arms=ARMS, event_time_ms=ts + 40)  # fmt: skip
                exposures.append(again)
            for item in items:
                outcomes.append(
                    make_outcome(user, "impression", request_id=request, item_id=item, event_time_ms=ts + 1)
                )
                if rng.random() < 0.15:
                    click = make_outcome(
                        user, "click", request_id=request, item_id=item, event_time_ms=ts + 500
                    )
                    outcomes += [click, make_outcome(user, "click", request_id=request, item_id=item,
                                                     event_time_ms=ts + 900)] if rng.random() < 0.2 else [click]  # fmt: skip
        ab_user = f"ab{u}"
        exposures.append(make_exposure(ab_user, "ab", "control", request_id=f"{ab_user}-r", item_ids=[1, 2]))
        outcomes.append(make_outcome(ab_user, "click", request_id=f"{ab_user}-r", item_id=1))
    return exposures, outcomes


def reference(exposures: list[events_pb2.Exposure], outcomes: list[events_pb2.Outcome], cuts: list) -> list:
    shown = [
        InterleavedExposure(
            x.user_id, x.request_id, list(x.item_ids), list(x.teams), x.event_time_ms, x.event_id
        )
        for x in exposures
        if x.experiment_key == "il"
    ]
    clicks = [
        Click(o.user_id, o.request_id, o.item_id, o.event_time_ms) for o in outcomes if o.metric == "click"
    ]
    return preference_counts_at(shown, clicks, cuts)


def test_decoder_keeps_items_teams_and_arms_and_rejects_what_does_not_fit() -> None:
    good = make_exposure("u1", "il", "interleaved", request_id="r1", item_ids=[7, 8], teams=[1, 0], arms=ARMS,
                         event_time_ms=5)  # fmt: skip
    repeated = events_pb2.Exposure()
    repeated.CopyFrom(good)
    repeated.item_ids.append(7)
    repeated.teams.append(1)  # an item twice: its clicks could not be credited once
    one_arm = events_pb2.Exposure()
    one_arm.CopyFrom(good)
    del one_arm.arms[1]
    click = make_outcome("u1", "click", request_id="r1", item_id=8, event_time_ms=9)
    watch = make_outcome("u1", "watch", 3.0, event_time_ms=9)  # names no request: not an item outcome
    value = frame_batch(
        [encode_exposure(e) for e in (good, repeated, one_arm)]
        + [encode_outcome(click), encode_outcome(watch)]
    )
    exposures, outcomes, interleaved, items = (
        ExposureColumns(),
        OutcomeColumns(),
        InterleavedColumns(),
        ItemOutcomeColumns(),
    )
    assert decode_into(value, exposures, outcomes, interleaved, items) == 2
    assert list(exposures) == [(good.event_id, "il", "interleaved", "u1", 5)]
    assert list(interleaved) == [
        (
            good.event_id,
            "il",
            "u1",
            "r1",
            5,
            [7, 8],
            [1, 0],
            "control",
            "mmoe",
            "1",
            "treatment",
            "mmoe+dml",
            "1",
        )
    ]
    assert len(outcomes) == 2 and list(items) == [(click.event_id, "u1", "r1", 8, "click", 9)]
    # A reader that cannot keep the lists skips interleaving exposures rather than read them as an A/B variant.
    exposures, outcomes = ExposureColumns(), OutcomeColumns()
    assert decode_into(value, exposures, outcomes) == 3 and len(exposures) == 0 and len(outcomes) == 2
    # Outcomes are never version 2.
    click.schema_version = events_pb2.SCHEMA_VERSION_2
    assert decode_into(frame_batch([encode_outcome(click)]), exposures, outcomes, interleaved, items) == 1


def test_only_outcomes_with_an_item_are_item_outcomes() -> None:
    """An outcome that names a request but no item was decoded as an item outcome of item 0, whose clicks the
    interleaving credit gave to the arm that showed item 0 in that request. Item 0 itself stays item 0."""
    no_item = make_outcome("u1", "click", request_id="r1", event_time_ms=9)
    item_0 = make_outcome("u1", "click", request_id="r1", item_id=0, event_time_ms=9)
    item_3 = make_outcome("u1", "impression", request_id="r1", item_id=3, event_time_ms=9)
    outcomes, items = OutcomeColumns(), ItemOutcomeColumns()
    value = frame_batch([encode_outcome(o) for o in (no_item, item_0, item_3)])
    assert decode_into(value, ExposureColumns(), outcomes, InterleavedColumns(), items) == 0
    assert [row[0] for row in outcomes] == [no_item.event_id, item_0.event_id, item_3.event_id]
    assert list(items) == [
        (item_0.event_id, "u1", "r1", 0, "click", 9),
        (item_3.event_id, "u1", "r1", 3, "impression", 9),
    ]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["duckdb", "memory"])
def test_interleaving_via_kafka_counts_once(
    kafka_broker: EmbeddedBroker, fresh_topics, tmp_path: Path, kind: str
) -> None:
    exposures, outcomes = interleaved_traffic(seed=7, users=150)
    cuts = [1_050_000, None]
    expected = reference(exposures, outcomes, cuts)
    assert expected[-1].n == 150 and expected[-1].wins_a and expected[-1].wins_b
    again = (f"{fresh_topics[0]}.again", f"{fresh_topics[1]}.again")
    kafka_broker.create_topics(again, partitions=4)
    store: EventStore = (
        DuckDBEventStore(tmp_path / "s", compact_parts=3) if kind == "duckdb" else MemoryEventStore()
    )
    with store:
        for topics in (fresh_topics, again):  # the same events a second time, from offset 0 of other topics
            _produce(kafka_broker.bootstrap, topics, exposures, outcomes, tmp_path, per_record=25)
            consumer = AnalyticsConsumer(
                kafka_broker.bootstrap, store, group_id=f"il-{kind}-{topics[0]}", topics=topics,
                session_timeout_ms=SESSION_MS, commit_interval_s=0.1, commit_every_events=400,
            )  # fmt: skip
            consumer.run(max_seconds=60, idle_exit_s=3)
            assert consumer.events_applied == len(exposures) + len(outcomes)
            assert store.preference_counts("il", cuts) == expected
            assert store.variant_counts("il") == {"interleaved": 150}
            assert store.experiments() == ["ab", "il"]
            (arms,) = store.interleaving_arms("il")
            assert (arms.a, arms.b) == (Arm(*ARMS[0]), Arm(*ARMS[1]))
            assert arms.exposures == sum(x.experiment_key == "il" for x in exposures)
        assert store.interleaving_arms("ab") == [] and store.preference_counts("ab", [None])[0].n == 0
