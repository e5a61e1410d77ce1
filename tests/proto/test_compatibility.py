"""Clients built from the previous .proto files keep working with the interleaving fields added."""

from __future__ import annotations

from proto import common_pb2, events_pb2, ranking_pb2
from tests.proto.old_schema import message_before, message_without_presence

NEW_RESPONSE_FIELDS = {9, 10}  # RankResponse.teams, RankResponse.arms
NEW_EXPOSURE_FIELDS = {12, 13}  # Exposure.teams, Exposure.arms


def interleaved_response() -> ranking_pb2.RankResponse:
    return ranking_pb2.RankResponse(
        request_id="r-1",
        candidate_ids=[11, 12, 13],
        task_names=["click"],
        task_scores=[ranking_pb2.TaskScores(scores=[0.5, 0.25, 0.125])],
        merged_scores=[0.5, 0.25, 0.125],
        assignments=[common_pb2.Assignment(experiment_key="il", variant_key="interleaved", stage="ranking")],
        teams=[1, 0, 1],
        arms=[
            common_pb2.InterleavingArm(key="control", model=common_pb2.ModelRef(name="m", version="1")),
            common_pb2.InterleavingArm(key="treatment", model=common_pb2.ModelRef(name="m", version="2")),
        ],
    )


def test_the_old_response_schema_lacks_the_new_fields() -> None:
    old = message_before(ranking_pb2, "RankResponse", NEW_RESPONSE_FIELDS)
    assert {f.number for f in old.DESCRIPTOR.fields} == set(range(1, 9))


def test_an_old_client_reads_an_interleaved_response_and_keeps_what_it_does_not_know() -> None:
    new = interleaved_response()
    old_class = message_before(ranking_pb2, "RankResponse", NEW_RESPONSE_FIELDS)
    old = old_class.FromString(new.SerializeToString())
    assert old.request_id == "r-1" and list(old.candidate_ids) == [11, 12, 13]
    assert list(old.task_scores[0].scores) == list(old.merged_scores) == [0.5, 0.25, 0.125]
    assert old.assignments[0].variant_key == "interleaved" and not old.HasField("model")
    # A proxy built on the old schema forwards the teams untouched (protobuf keeps unknown fields).
    assert ranking_pb2.RankResponse.FromString(old.SerializeToString()) == new


def test_a_new_client_reads_an_old_server_response_as_not_interleaved() -> None:
    old_class = message_before(ranking_pb2, "RankResponse", NEW_RESPONSE_FIELDS)
    old = old_class(request_id="r-2", candidate_ids=[5, 6])
    old.model.name, old.model.version = "m", "1"
    new = ranking_pb2.RankResponse.FromString(old.SerializeToString())
    assert list(new.candidate_ids) == [5, 6] and not new.teams and not new.arms and new.model.version == "1"


def test_an_old_consumer_reads_an_interleaving_exposure() -> None:
    exposure = events_pb2.Exposure(
        event_id="e",
        schema_version=events_pb2.SCHEMA_VERSION_2,
        user_id="u",
        experiment_key="il",
        variant_key="interleaved",
        item_ids=[3, 4],
        teams=[0, 1],
        arms=interleaved_response().arms,
    )
    old_class = message_before(events_pb2, "Exposure", NEW_EXPOSURE_FIELDS)
    old = old_class.FromString(exposure.SerializeToString())
    assert list(old.item_ids) == [3, 4]
    assert old.schema_version == 2  # which such a consumer skips: version 2 is unknown to it


def test_teams_are_packed() -> None:
    one = ranking_pb2.RankResponse(teams=[1]).SerializeToString()
    many = ranking_pb2.RankResponse(teams=[1] * 100).SerializeToString()
    assert len(many) - len(one) == 99  # one tag and length for the array, one byte per team


def test_the_optional_item_id_keeps_the_wire_format_of_the_plain_one() -> None:
    """``Outcome.item_id`` became ``optional`` so that item 0 and no item differ; field 10, int64, as before."""
    old_class = message_without_presence(events_pb2, "Outcome", 10)
    for item in (7, -3, 1 << 40):
        assert events_pb2.Outcome(item_id=item).SerializeToString() == old_class(item_id=item).SerializeToString()
        assert events_pb2.Outcome.FromString(old_class(item_id=item).SerializeToString()).item_id == item
    assert not events_pb2.Outcome.FromString(old_class(item_id=0, metric="click").SerializeToString()).HasField(
        "item_id"
    )  # an old producer never sent item 0: its outcome reads as one without an item (as it always meant)
    assert old_class.FromString(events_pb2.Outcome(item_id=0).SerializeToString()).item_id == 0
    assert events_pb2.Outcome(item_id=0).SerializeToString() == b"\x50\x00"  # field 10, varint 0: item 0 is sent
