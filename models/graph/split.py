"""Edge hold-out split for friend retrieval.

The split is a seeded random partition of the undirected friendships into train / validation / test (default
85 / 5 / 10, as in the link-prediction literature on ego-Facebook). Only train edges are used for message passing
(neighbourhood sampling) and as positives of the retrieval loss; validation edges pick the best checkpoint; test
edges are the held-out friendships we report on. When ranking candidates for a user, the user itself and its
friends in the splits "before" the evaluated one are excluded (train for validation, train + validation for test),
exactly as a production retriever excludes existing friends. A user may lose all its train edges: it is then
embedded from its features alone, which is the cold-start case the degree slices report.

The random split leaves few low-degree users (about 50 of degree <= 2 on ego-Facebook), too few to measure a
cold-start effect. ``cold_start_split`` adds an inductive cold-start protocol on top of it: ``n_cold`` users
drawn at random keep at most ``k ~ Uniform{0..max_visible}`` of their training friendships; the others move to
validation / test (fewer than k where the other end of a kept friendship is a cold user too and hides it: on
ego-Facebook about a third of the 500 cold users, 4.15 kept on average against 4.67 drawn) (in the random split's val : test ratio), so those users are embedded at training and
serving time from their features and at most ``max_visible`` friends, and evaluated on the friendships they
will make.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.graph.datasets import canonical_edges


@dataclass(frozen=True)
class EdgeSplit:
    """Undirected edges (rows u < v) of each part of the split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    cold_users: np.ndarray | None = None  # the cold-start split's users, sorted ids


def split_edges(
    edges: np.ndarray, val_frac: float = 0.05, test_frac: float = 0.10, seed: int = 0
) -> EdgeSplit:
    """Randomly partition the undirected friendships of ``edges`` into train / validation / test.

    ``edges`` may list a friendship twice or in both directions: the partition is over distinct (min, max)
    pairs, so a friendship never lands in two parts (a reversed copy could sit in train while the test kept
    it).
    """
    edges = canonical_edges(edges)
    if not 0.0 <= val_frac < 1.0 or not 0.0 <= test_frac < 1.0 or val_frac + test_frac >= 1.0:
        raise ValueError(f"invalid split fractions val={val_frac} test={test_frac}")
    order = np.random.default_rng(seed).permutation(len(edges))
    n_test = int(round(len(edges) * test_frac))
    n_val = int(round(len(edges) * val_frac))
    test = edges[np.sort(order[:n_test])]
    val = edges[np.sort(order[n_test : n_test + n_val])]
    train = edges[np.sort(order[n_test + n_val :])]
    return EdgeSplit(train=train, val=val, test=test)


def cold_start_split(
    edges: np.ndarray,
    num_nodes: int,
    val_frac: float = 0.05,
    test_frac: float = 0.10,
    n_cold: int = 500,
    max_visible: int = 10,
    seed: int = 0,
) -> EdgeSplit:
    """``split_edges`` plus ``n_cold`` users who keep at most ``max_visible`` training friendships.

    Cold users are drawn among nodes with at least two friendships; each keeps
    ``min(k, training degree - 1)`` of its training edges with ``k ~ Uniform{0..max_visible}``, chosen at random
    (so at least one friendship is held out), and an edge hidden by either endpoint leaves training, so a cold
    user's training degree is at most its ``k``.
    """
    if val_frac + test_frac <= 0:  # the hidden friendships must go somewhere (ZeroDivisionError below)
        raise ValueError(f"the cold-start split needs val or test friendships, got val={val_frac} test={test_frac}")
    edges = canonical_edges(edges)
    base = split_edges(edges, val_frac, test_frac, seed)
    rng = np.random.default_rng([seed, 1])  # independent of the random split's stream
    degree = np.bincount(edges.reshape(-1), minlength=num_nodes)
    candidates = np.flatnonzero(degree >= 2)
    if n_cold > len(candidates):
        raise ValueError(f"n_cold={n_cold} exceeds the {len(candidates)} users with at least two friendships")
    cold = np.sort(rng.choice(candidates, n_cold, replace=False))
    keep = dict(zip(cold.tolist(), rng.integers(0, max_visible + 1, n_cold).tolist(), strict=True))
    hide = np.zeros(len(base.train), dtype=bool)
    incident: dict[int, list[int]] = {u: [] for u in keep}
    for row, (u, v) in enumerate(base.train.tolist()):
        for w in (u, v):
            if w in incident:
                incident[w].append(row)
    for u, rows in incident.items():
        order = rng.permutation(len(rows))
        hide[np.asarray(rows, dtype=np.int64)[order[min(keep[u], len(rows) - 1) :]]] = True
    moved = base.train[hide]
    to_val = rng.random(len(moved)) < val_frac / (val_frac + test_frac)
    return EdgeSplit(
        train=base.train[~hide],
        val=_sorted_rows(np.concatenate([base.val, moved[to_val]])),
        test=_sorted_rows(np.concatenate([base.test, moved[~to_val]])),
        cold_users=cold,
    )


def _sorted_rows(edges: np.ndarray) -> np.ndarray:
    return edges[np.lexsort((edges[:, 1], edges[:, 0]))]
