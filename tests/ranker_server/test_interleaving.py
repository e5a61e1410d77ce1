"""Team-draft merge invariants (hypothesis) and its per-request coin (seeded by user and request id)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from ranker_server.interleaving import ARM_A, ARM_B, coin_flips, interleave, team_draft

ITEMS = st.integers(min_value=0, max_value=60)
rankings = st.lists(ITEMS, unique=True, max_size=40)
request_ids = st.text(max_size=40)
USER = "user-1"


@st.composite
def same_candidates(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Two rankings of one candidate set (what the ranker merges: both arms score the same candidates)."""
    a = draw(st.lists(ITEMS, unique=True, max_size=40))
    b = draw(st.permutations(a))
    return a, list(b)


def _counts(teams: list[int]) -> np.ndarray:
    """Per prefix: items from arm B minus items from arm A."""
    return np.cumsum(np.where(np.array(teams, int) == ARM_B, 1, -1)) if teams else np.zeros(0, int)


@given(same_candidates(), st.integers(0, 50), request_ids)
def test_every_prefix_is_balanced_within_one_item(
    pair: tuple[list[int], list[int]], k: int, rid: str
) -> None:
    a, b = pair
    items, teams = interleave(a, b, k, USER, rid)
    assert np.all(np.abs(_counts(teams)) <= 1)
    assert len(items) == min(k, len(a))  # top-k truncation; every candidate when k is larger


@given(rankings, rankings, st.integers(0, 90), request_ids)
def test_no_duplicates_and_every_item_comes_from_its_team(
    a: list[int], b: list[int], k: int, rid: str
) -> None:
    items, teams = interleave(a, b, k, USER, rid)
    assert len(items) == len(set(items)) == len(teams)
    assert len(items) == min(k, len(set(a) | set(b)))
    assert set(teams) <= {ARM_A, ARM_B}
    for arm, ranking in ((ARM_A, a), (ARM_B, b)):
        mine = [item for item, team in zip(items, teams, strict=True) if team == arm]
        assert all(item in ranking for item in mine)
        positions = [ranking.index(item) for item in mine]
        assert positions == sorted(positions)  # each arm adds its items in its own order
        for item in mine:  # ...and each pick was that arm's best item not yet in the list
            before = set(items[: items.index(item)])
            assert item == next(x for x in ranking if x not in before)


@given(rankings, rankings, st.integers(0, 90), request_ids)
def test_prefixes_stay_balanced_until_an_arm_runs_out(a: list[int], b: list[int], k: int, rid: str) -> None:
    items, teams = interleave(a, b, k, USER, rid)
    for n in range(1, len(items) + 1):
        prefix = set(items[: n - 1])
        both_had_one = any(x not in prefix for x in a) and any(x not in prefix for x in b)
        if not both_had_one:
            break
        assert abs(_counts(teams[:n])[-1]) <= 1


@given(rankings, rankings, st.integers(0, 90), request_ids)
def test_the_same_request_id_gets_the_same_list(a: list[int], b: list[int], k: int, rid: str) -> None:
    assert interleave(a, b, k, USER, rid) == interleave(list(a), list(b), k, USER, str(rid))


@given(rankings, rankings, st.integers(0, 90), st.integers(0, 90), request_ids)
def test_a_shorter_list_is_a_prefix_of_a_longer_one(
    a: list[int], b: list[int], k: int, extra: int, rid: str
) -> None:
    short = interleave(a, b, k, USER, rid)
    long = interleave(a, b, k + extra, USER, rid)
    assert long[0][: len(short[0])] == short[0] and long[1][: len(short[1])] == short[1]


@given(same_candidates(), st.lists(st.booleans(), min_size=25, max_size=25))
def test_the_round_coin_decides_who_picks_first(pair: tuple[list[int], list[int]], coins: list[bool]) -> None:
    a, b = pair
    items, teams = team_draft(a, b, len(a), coins)
    for start in range(0, len(items), 2):  # both arms have as many items at the start of every round
        assert teams[start] == (ARM_A if coins[start // 2] else ARM_B)


@settings(max_examples=50)
@given(rankings, request_ids)
def test_identical_rankings_merge_to_the_same_ranking(a: list[int], rid: str) -> None:
    items, _ = interleave(a, a, len(a), USER, rid)
    assert items == a


def test_worked_example() -> None:
    """Round 1: A first takes 1, B takes 2; round 2: B first takes 4 (1 and 2 are gone), A takes 3."""
    assert team_draft([1, 2, 3, 4], [2, 1, 4, 3], 4, [True, False]) == ([1, 2, 4, 3], [0, 1, 1, 0])
    assert team_draft([1, 2, 3, 4], [2, 1, 4, 3], 3, [False, True]) == ([2, 1, 3], [1, 0, 0])
    assert team_draft([1, 2], [3, 4, 5, 6], 5, [True, True, True]) == ([1, 3, 2, 4, 5], [0, 1, 0, 1, 1])


def test_coins_are_fair_and_independent_across_requests() -> None:
    flips = np.array([coin_flips(USER, f"request-{i}", 8) for i in range(4000)])
    for column in flips.T:  # each round's coin is fair over request ids
        assert binomtest(int(column.sum()), len(column)).pvalue > 1e-3
    agree = (flips[:, 0] == flips[:, 1]).sum()  # and rounds do not copy each other
    assert binomtest(int(agree), len(flips)).pvalue > 1e-3
    assert coin_flips(USER, "x", 0) == [] and len(coin_flips(USER, "x", 1000)) == 1000
    assert (
        coin_flips(USER, "request-7", 8) == coin_flips(USER, "request-7", 16)[:8]
    )  # longer lists extend, never reshuffle


def test_users_sending_the_same_request_id_draw_their_own_coins() -> None:
    """Clients may number requests per session ("feed-1" for every user's first feed): coins seeded by the
    request id alone put the same arm first in every such list, and position bias then favours that arm."""
    flips = np.array([coin_flips(f"user-{i}", "feed-1", 8) for i in range(4000)])
    for column in flips.T:
        assert binomtest(int(column.sum()), len(column)).pvalue > 1e-3
    assert coin_flips("ab", "c", 64) != coin_flips("a", "bc", 64)  # the user id is delimited
    leads = [interleave([1, 2, 3], [3, 2, 1], 3, f"user-{i}", "home")[1][0] for i in range(400)]
    assert binomtest(leads.count(ARM_A), len(leads)).pvalue > 1e-3
