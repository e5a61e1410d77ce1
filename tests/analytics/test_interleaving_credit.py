"""Credit assignment reference (``analytics.interleaving``): the rules the warehouse query must reproduce."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics.events.errors import InvalidEvent
from analytics.events.messages import (
    INTERLEAVING_SCHEMA_VERSION,
    KNOWN_SCHEMA_VERSIONS,
    SENDABLE_SCHEMA_VERSIONS,
    complete,
    make_exposure,
    make_outcome,
)
from analytics.interleaving import (
    Click,
    InterleavedExposure,
    UserPreference,
    preference_counts,
    user_preferences,
)
from proto import events_pb2

EXPOSURES = [
    InterleavedExposure("u1", "r1", [10, 11, 12, 13], [0, 1, 1, 0], event_time_ms=5, event_id="e1"),
    InterleavedExposure("u1", "r2", [11, 10, 14], [0, 1, 0], event_time_ms=9, event_id="e2"),
    InterleavedExposure("u1", "r1", [10, 11, 12, 13], [0, 1, 1, 0], event_time_ms=7, event_id="e3"),  # retry
    InterleavedExposure("u2", "r3", [20, 21], [1, 0], event_time_ms=1, event_id="e4"),
    InterleavedExposure("u3", "r4", [30, 31], [0, 1], event_time_ms=1, event_id="e5"),
    InterleavedExposure("u4", "r5", [40, 41], [0, 1], event_time_ms=1, event_id="e6"),
]
CLICKS = [
    Click("u1", "r1", 11),  # B
    Click("u1", "r1", 11),  # a double click: credited once
    Click("u1", "r1", 12),  # B
    Click("u1", "r2", 11),  # the same item at another request: A there
    Click("u1", "r2", 99),  # not shown at r2: ignored
    Click("u1", "r9", 10),  # not an interleaved request of u1: ignored
    Click("u2", "r1", 11),  # r1 is u1's request, not u2's: ignored
    Click("u2", "r3", 21),  # A
    Click("u3", "r4", 30),  # A
    Click("u3", "r4", 31),  # B: a tie
]


def test_worked_example() -> None:
    assert user_preferences(EXPOSURES, CLICKS) == [
        UserPreference("u1", credit_a=1, credit_b=2),
        UserPreference("u2", credit_a=1, credit_b=0),
        UserPreference("u3", credit_a=1, credit_b=1),
        UserPreference("u4", credit_a=0, credit_b=0),  # exposed, no click: counted in n, no preference
    ]
    counts = preference_counts(user_preferences(EXPOSURES, CLICKS))
    assert (counts.n, counts.wins_a, counts.wins_b, counts.ties) == (4, 1, 1, 1)
    assert (counts.credit_diff_sum, counts.credit_diff_sum_squares) == (0.0, 2.0)  # diffs 1, -1, 0, 0
    assert counts.preference == 0.0


def test_the_first_exposure_of_a_request_defines_its_teams() -> None:
    changed = InterleavedExposure("u1", "r1", [10, 11, 12, 13], [1, 0, 0, 1], event_time_ms=1, event_id="e0")
    prefs = user_preferences([*EXPOSURES, changed], CLICKS)
    assert prefs[0] == UserPreference("u1", credit_a=3, credit_b=0)  # 11 and 12 are A's at the earliest


@given(st.randoms(use_true_random=False))
def test_row_order_does_not_matter(shuffler: random.Random) -> None:
    exposures, clicks = list(EXPOSURES), list(CLICKS)
    shuffler.shuffle(exposures)
    shuffler.shuffle(clicks)
    assert user_preferences(exposures, clicks) == user_preferences(EXPOSURES, CLICKS)


def test_against_a_vectorised_recount_on_random_logs() -> None:
    """Random requests and clicks (no retries, no duplicates): credits equal a direct numpy tally."""
    rng = np.random.default_rng(5)
    exposures, clicks, expected = [], [], {}
    for u in range(200):
        user = f"user-{u:03d}"
        credit = np.zeros(2, int)
        for r in range(int(rng.integers(1, 4))):
            items = rng.choice(1000, 10, replace=False)
            teams = rng.integers(0, 2, 10)
            exposures.append(InterleavedExposure(user, f"{user}-{r}", items.tolist(), teams.tolist()))
            clicked = rng.random(10) < 0.15
            clicks += [Click(user, f"{user}-{r}", int(i)) for i in items[clicked]]
            credit += np.bincount(teams[clicked], minlength=2)
        expected[user] = UserPreference(user, int(credit[0]), int(credit[1]))
    assert user_preferences(exposures, clicks) == [expected[u] for u in sorted(expected)]


def test_malformed_exposures_are_refused() -> None:
    with pytest.raises(ValueError, match="one per item"):
        user_preferences([InterleavedExposure("u", "r", [1, 2], [0])], [])
    with pytest.raises(ValueError, match="one per item"):
        user_preferences([InterleavedExposure("u", "r", [1, 2], [0, 2])], [])
    with pytest.raises(ValueError, match="twice"):
        user_preferences([InterleavedExposure("u", "r", [1, 1], [0, 1])], [])


# ---- the events the credit starts from -----------------------------------------------------------------

ARMS = (("control", "m", "1"), ("treatment", "m", "2"))


def test_make_exposure_builds_a_version_2_interleaving_exposure() -> None:
    exposure = make_exposure("u", "il", "interleaved", item_ids=[7, 8, 9], teams=[1, 0, 0], arms=ARMS, request_id="r")
    assert exposure.schema_version == INTERLEAVING_SCHEMA_VERSION == events_pb2.SCHEMA_VERSION_2
    assert list(exposure.teams) == [1, 0, 0] and [a.model.version for a in exposure.arms] == ["1", "2"]
    assert not exposure.HasField("model")
    plain = make_exposure("u", "ab", "control", item_ids=[7], model_name="m", model_version="1")
    assert plain.schema_version == events_pb2.SCHEMA_VERSION_1 and plain.model.name == "m"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"item_ids": [7, 8], "teams": [1], "arms": ARMS}, "teams has 1 entries for 2 item_ids"),
        ({"item_ids": [7], "teams": [2], "arms": ARMS}, "0 or 1"),
        ({"item_ids": [7], "teams": [0], "arms": ARMS[:1]}, "2 arms"),
        ({"item_ids": [7], "teams": [0]}, "schema_version 2"),
        ({"item_ids": [7, 8, 7], "teams": [0, 1, 1], "arms": ARMS}, "item_ids must not repeat"),
        ({"item_ids": [7], "teams": [0], "arms": ARMS, "request_id": ""}, "request_id must not be empty"),
    ],
)
def test_exposures_whose_teams_do_not_fit_are_invalid(fields: dict, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        make_exposure("u", "il", "interleaved", **{"request_id": "r", **fields})


def test_producers_send_version_2_exposures_but_not_version_2_outcomes() -> None:
    exposure = make_exposure("u", "il", "interleaved", item_ids=[7], teams=[0], arms=ARMS, request_id="r")
    exposure.schema_version = events_pb2.SCHEMA_VERSION_UNSPECIFIED
    complete(exposure)  # fills in the version an exposure with arms has
    assert exposure.schema_version == events_pb2.SCHEMA_VERSION_2
    outcome = make_outcome("u", "click")
    outcome.schema_version = events_pb2.SCHEMA_VERSION_2
    with pytest.raises(InvalidEvent, match="unknown"):
        complete(outcome)
    assert INTERLEAVING_SCHEMA_VERSION in SENDABLE_SCHEMA_VERSIONS == KNOWN_SCHEMA_VERSIONS
