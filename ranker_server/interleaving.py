"""Team-draft interleaving (Radlinski, Kurup and Joachims, CIKM 2008): two rankings merged into one list.

Pure functions, no I/O: the ranker merges each interleaved request with them, and the sensitivity benchmark
(``benchmarks/bench_interleaving.py``) merges offline with the same code.

Team draft, as in the paper: rounds in which each arm ("team") adds its highest-ranked item that is not in
the list yet. The arm with fewer items in the list picks next; when both have as many (at the start of
every round) the request's coin for that round decides which picks first. So every prefix of the list holds
as many items from one arm as from the other, give or take one, and a click on position ``i`` is credited to
``teams[i]``: under no preference each arm is equally likely to hold any position.

Ties, all resolved deterministically:

* Within an arm, equal scores keep the request's candidate order (the ranker sorts stably).
* Between arms, the coin of the round decides who picks first (bits of SHAKE-128 of the user and request
  ids, so a retry with the same request id gets the same list, and different requests are independent). The
  user is part of the seed because request ids are the client's: a client that numbers requests per session
  ("feed-1", "feed-2", ...) sends every user the same ids, and coins of the id alone would then put the same
  arm first in every user's list, crediting that arm with the extra clicks the top positions get.
* An item both arms rank goes to the arm that picks it first; the other arm skips it (no duplicates).
* When one arm has no item left that is not in the list (only when the two rankings hold different items),
  the other arm fills the remaining positions, and balance holds only up to that point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from typing import TypeVar

ARM_A, ARM_B = 0, 1
"""Values of ``teams``: the index of the arm (the experiment's first or second variation)."""

_COIN_DOMAIN = b"mtrank/team-draft/v2\x00"

T = TypeVar("T", bound=Hashable)


def coin_flips(user_id: str, request_id: str, rounds: int) -> list[bool]:
    """``rounds`` fair coins of one user's request: True when arm A picks first in that round.

    SHAKE-128 is deterministic across processes, machines and languages (Python's ``hash`` is not). The user
    id goes in with its length, so no other (user, request) pair hashes the same bytes.
    """
    if rounds <= 0:
        return []
    user = user_id.encode()
    seed = _COIN_DOMAIN + len(user).to_bytes(8, "little") + user + request_id.encode()
    bits = int.from_bytes(hashlib.shake_128(seed).digest((rounds + 7) // 8), "little")
    return [bool(bits >> r & 1) for r in range(rounds)]


def team_draft(
    ranking_a: Sequence[T], ranking_b: Sequence[T], k: int, a_first: Sequence[bool]
) -> tuple[list[T], list[int]]:
    """Merge two rankings by team draft.

    Args:
        ranking_a: arm A's items, best first (each item at most once).
        ranking_b: arm B's items, best first (each item at most once).
        k: length of the merged list; it is shorter only when the two rankings hold fewer distinct items.
        a_first: one coin per round (``(k + 1) // 2`` of them): True when arm A picks first in that round.

    Returns:
        The merged items, and for each position the arm (``ARM_A`` or ``ARM_B``) that contributed it.
    """
    items: list[T] = []
    teams: list[int] = []
    taken: set[T] = set()
    rankings = (ranking_a, ranking_b)
    next_index = [0, 0]  # per arm: where its search for an item not in the list resumes
    picked = [0, 0]
    while len(items) < k:
        if picked[ARM_A] != picked[ARM_B]:
            arm = ARM_A if picked[ARM_A] < picked[ARM_B] else ARM_B
        else:
            arm = ARM_A if a_first[len(items) // 2] else ARM_B
        for candidate in (arm, 1 - arm):  # the chosen arm, or the other one when it has run out
            ranking, i = rankings[candidate], next_index[candidate]
            while i < len(ranking) and ranking[i] in taken:
                i += 1
            next_index[candidate] = i
            if i < len(ranking):
                arm = candidate
                break
        else:
            break  # both arms ran out
        item = rankings[arm][next_index[arm]]
        items.append(item)
        teams.append(arm)
        taken.add(item)
        picked[arm] += 1
        next_index[arm] += 1
    return items, teams


def interleave(
    ranking_a: Sequence[T], ranking_b: Sequence[T], k: int, user_id: str, request_id: str
) -> tuple[list[T], list[int]]:
    """Team draft with the coins of the user's request: a retry (same user and request id) repeats it."""
    return team_draft(ranking_a, ranking_b, k, coin_flips(user_id, request_id, (k + 1) // 2))
