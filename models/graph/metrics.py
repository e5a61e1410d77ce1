"""Offline retrieval metrics on held-out friendships: Recall@K, MRR and NDCG@K, overall and by user degree.

For every user with at least one held-out friend, all other nodes are ranked by inner product of embeddings,
excluding the user and its already-known friends (see ``models.graph.split``). MRR uses the exact rank of the
first held-out friend in the full ranking (not cut at K). Edges are undirected: a pair listed twice or in
both directions is one friendship, and a held-out friend who is also known is not a target (it cannot be
retrieved). A held-out friend ranks after every candidate with the same score, in every metric: a tie never
counts in the model's favour (a collapsed encoder that scores everyone alike got MRR 1 from counting only
strictly higher scores, and Recall@K at a tie at the cut-off depended on ``argpartition``'s internal order).
"""

from __future__ import annotations

import numpy as np

from models.graph.datasets import canonical_edges
from models.graph.sampling import csr_adjacency

DEGREE_SLICES: dict[str, tuple[int, int]] = {
    "cold (deg<=2)": (0, 2),
    "low (deg<=10)": (0, 10),
    "mid (11-50)": (11, 50),
    "high (>50)": (51, 1 << 62),
}


def adjacency_sets(num_nodes: int, edges: np.ndarray) -> list[np.ndarray]:
    """Sorted, distinct neighbour arrays of every node for undirected ``edges`` (either direction, repeats
    allowed)."""
    indptr, indices = csr_adjacency(num_nodes, canonical_edges(edges))
    return [indices[indptr[i] : indptr[i + 1]] for i in range(num_nodes)]


def per_user_metrics(
    embeddings: np.ndarray,
    known_edges: np.ndarray,
    heldout_edges: np.ndarray,
    ks: tuple[int, ...] = (10, 50, 100),
    ndcg_k: int = 50,
    chunk: int = 512,
) -> dict[str, np.ndarray]:
    """Per-user metrics for users with a held-out friend: ``{"user", "recall@K"..., "mrr", "ndcg@K"}``."""
    num_nodes = embeddings.shape[0]
    known = adjacency_sets(num_nodes, known_edges)
    heldout = adjacency_sets(num_nodes, heldout_edges)
    targets = [np.setdiff1d(held, seen) for held, seen in zip(heldout, known, strict=True)]
    users = np.array([u for u in range(num_nodes) if len(targets[u])], dtype=np.int64)
    top_k = min(max(*ks, ndcg_k), num_nodes)  # a cut-off past the node count ranks every node
    out: dict[str, list[float]] = {**{f"recall@{k}": [] for k in ks}, "mrr": [], f"ndcg@{ndcg_k}": []}
    discounts = 1.0 / np.log2(np.arange(2, top_k + 2))
    for start in range(0, len(users), chunk):
        batch = users[start : start + chunk]
        scores = embeddings[batch] @ embeddings.T
        is_target = np.zeros(scores.shape, dtype=bool)
        for row, u in enumerate(batch):
            scores[row, known[u]] = -np.inf
            scores[row, u] = -np.inf
            is_target[row, targets[u]] = True
        order = np.lexsort((is_target, -scores), axis=1)  # by score; on a tie, held-out friends last
        position = np.empty_like(order)
        np.put_along_axis(position, order, np.arange(num_nodes)[np.newaxis, :], axis=1)
        for row, u in enumerate(batch):
            relevant = targets[u]
            hits = is_target[row, order[row, :top_k]]
            for k in ks:
                out[f"recall@{k}"].append(hits[:k].sum() / len(relevant))
            out["mrr"].append(1.0 / (1.0 + position[row, relevant].min()))
            ideal = discounts[: min(len(relevant), ndcg_k)].sum()
            out[f"ndcg@{ndcg_k}"].append(float((hits[:ndcg_k] * discounts[:ndcg_k]).sum() / ideal))
    return {"user": users} | {name: np.asarray(values) for name, values in out.items()}


def summarise(
    per_user: dict[str, np.ndarray], degree: np.ndarray, groups: dict[str, np.ndarray] | None = None
) -> dict[str, dict[str, float]]:
    """Mean of each metric overall, per degree slice (degree = the user's training degree) and per named
    group of user ids in ``groups`` (e.g. the cold-start users of a split); ``users`` counts the users each
    mean is over, those with a held-out friend (the others have nothing to retrieve)."""
    users = per_user["user"]
    names = [name for name in per_user if name != "user"]
    slices = {"overall": np.ones(len(users), dtype=bool)}
    for label, (low, high) in DEGREE_SLICES.items():
        slices[label] = (degree[users] >= low) & (degree[users] <= high)
    for label, members in (groups or {}).items():
        slices[label] = np.isin(users, members)
    result: dict[str, dict[str, float]] = {}
    for label, mask in slices.items():
        result[label] = {"users": int(mask.sum())}
        result[label] |= {
            name: float(per_user[name][mask].mean()) if mask.any() else float("nan") for name in names
        }
    return result
