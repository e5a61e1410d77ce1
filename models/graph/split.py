"""Edge hold-out split for friend retrieval.

The split is a seeded random partition of the undirected friendships into train / validation / test (default
85 / 5 / 10, as in the link-prediction literature on ego-Facebook). Only train edges are used for message passing
(neighbourhood sampling) and as positives of the retrieval loss; validation edges pick the best checkpoint; test
edges are the held-out friendships we report on. When ranking candidates for a user, the user itself and its
friends in the splits "before" the evaluated one are excluded (train for validation, train + validation for test),
exactly as a production retriever excludes existing friends. A user may lose all its train edges: it is then
embedded from its features alone, which is the cold-start case the degree slices report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EdgeSplit:
    """Undirected edges (rows u < v) of each part of the split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_edges(
    edges: np.ndarray, val_frac: float = 0.05, test_frac: float = 0.10, seed: int = 0
) -> EdgeSplit:
    """Randomly partition ``edges`` into train / validation / test with the given fractions."""
    if not 0.0 <= val_frac < 1.0 or not 0.0 <= test_frac < 1.0 or val_frac + test_frac >= 1.0:
        raise ValueError(f"invalid split fractions val={val_frac} test={test_frac}")
    order = np.random.default_rng(seed).permutation(len(edges))
    n_test = int(round(len(edges) * test_frac))
    n_val = int(round(len(edges) * val_frac))
    test = edges[np.sort(order[:n_test])]
    val = edges[np.sort(order[n_test : n_test + n_val])]
    train = edges[np.sort(order[n_test + n_val :])]
    return EdgeSplit(train=train, val=val, test=test)
