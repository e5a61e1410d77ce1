"""Offline retrieval evaluation of the graph models against brute-force references: metrics with ties,
repeated and reversed edges, the edge splits over undirected friendships, and checkpoint choice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.errors import ModelsError
from models.graph.datasets import canonical_edges, synthetic_graph
from models.graph.metrics import per_user_metrics
from models.graph.split import cold_start_split, split_edges
from models.graph.training import TrainConfig, train

TINY = {"hidden_dim": 16, "embed_dim": 8, "heads": 2, "fanouts": (4, 3), "ssl_nodes": 16}


def _friends(edges: np.ndarray, user: int) -> set[int]:
    return {int(b if a == user else a) for a, b in edges.tolist() if user in (a, b) and a != b}


def _reference(
    emb: np.ndarray, known: np.ndarray, heldout: np.ndarray, ks: tuple[int, ...], ndcg_k: int
) -> dict[int, dict[str, float]]:
    """Each user's metrics over every candidate ranked by score, a held-out friend after its ties."""
    result = {}
    for u in range(len(emb)):
        seen = _friends(known, u)
        targets = _friends(heldout, u) - seen
        if not targets:
            continue
        candidates = [v for v in range(len(emb)) if v != u and v not in seen]
        ranking = sorted(candidates, key=lambda v: (-float(emb[u] @ emb[v]), v in targets, v))
        row = {f"recall@{k}": len(targets & set(ranking[:k])) / len(targets) for k in ks}
        row["mrr"] = 1.0 / (1 + min(ranking.index(v) for v in targets))
        gain = sum(1 / math.log2(i + 2) for i, v in enumerate(ranking[:ndcg_k]) if v in targets)
        row[f"ndcg@{ndcg_k}"] = gain / sum(1 / math.log2(i + 2) for i in range(min(len(targets), ndcg_k)))
        result[u] = row
    return result


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_the_brute_force_ranking_with_ties_repeats_and_overlaps(seed: int) -> None:
    """Integer embeddings tie often; edges come repeated, reversed and held out while known. Before: MRR
    counted only strictly higher scores, a tie at the cut-off followed argpartition, and a known held-out
    friend stayed a target (its -inf slot inside the top K even counted as a hit)."""
    rng = np.random.default_rng(seed)
    n = 9
    emb = rng.integers(-1, 2, size=(n, 2)).astype(np.float64)
    pairs = rng.integers(0, n, size=(14, 2))
    known, heldout = pairs[:6], np.concatenate([pairs[6:], pairs[:2, ::-1], pairs[7:9]])
    ks, ndcg_k = (1, 3, 20), 4  # 20 is past the candidate count
    per_user = per_user_metrics(emb, known, heldout, ks=ks, ndcg_k=ndcg_k, chunk=4)
    expected = _reference(emb, known, heldout, ks, ndcg_k)
    assert per_user["user"].tolist() == sorted(expected)
    for name in [f"recall@{k}" for k in ks] + ["mrr", f"ndcg@{ndcg_k}"]:
        assert per_user[name] == pytest.approx([expected[u][name] for u in sorted(expected)]), name


def test_a_collapsed_encoder_gets_no_credit_for_ties() -> None:
    """Every node scores alike: the held-out friend ranks last among the 3 candidates (MRR was 1)."""
    per_user = per_user_metrics(
        np.ones((4, 2)), np.zeros((0, 2), np.int64), np.array([[0, 1]]), ks=(2,), ndcg_k=3
    )
    assert per_user["mrr"].tolist() == [pytest.approx(1 / 3)] * 2
    assert per_user["recall@2"].tolist() == [0.0, 0.0]
    assert per_user["ndcg@3"] == pytest.approx([0.5, 0.5])  # 1 / log2(4) of an ideal 1


def _raw_copy(edges: np.ndarray, seed: int) -> np.ndarray:
    """``edges`` as a raw file may list them: every friendship in both directions, some twice, shuffled."""
    rng = np.random.default_rng(seed)
    raw = np.concatenate([edges, edges[:, ::-1], edges[rng.choice(len(edges), 40)]])
    return raw[rng.permutation(len(raw))]


@pytest.mark.parametrize("cold", [False, True])
def test_splits_partition_undirected_friendships_whatever_the_raw_listing(cold: bool) -> None:
    """A friendship listed in both directions went to two parts (209 of 1,200 synthetic friendships were in
    train and test at once); the split of a raw listing is now the split of its distinct friendships."""
    graph = synthetic_graph(seed=1)

    def split(edges: np.ndarray):
        if cold:
            return cold_start_split(edges, graph.num_nodes, 0.1, 0.2, n_cold=20, seed=4)
        return split_edges(edges, 0.1, 0.2, seed=4)

    raw, clean = split(_raw_copy(graph.edges, 0)), split(graph.edges)
    parts = [raw.train, raw.val, raw.test]
    for part, expected in zip(parts, [clean.train, clean.val, clean.test], strict=True):
        assert np.array_equal(part, expected)
    together = np.concatenate(parts)
    assert np.array_equal(canonical_edges(together), graph.edges) and len(together) == len(graph.edges)


def test_training_without_validation_friendships_is_an_error() -> None:
    """With no validation edge every evaluation scored NaN and ``train`` returned the untrained weights."""
    graph = synthetic_graph(num_nodes=120, seed=1)
    config = TrainConfig(dataset="synthetic", steps=2, batch_size=8, eval_every=1, val_frac=0.0, model=TINY)
    with pytest.raises(ModelsError, match=r"^val_frac=0.0 leaves no validation friendship among \d+"):
        train(config, graph=graph, progress=False)


def test_a_cold_start_split_without_held_out_fractions_is_an_error() -> None:
    """Its hidden friendships go to validation and test in their ratio: with both at 0, ZeroDivisionError."""
    edges = synthetic_graph(seed=1).edges
    with pytest.raises(ValueError, match="needs val or test friendships"):
        cold_start_split(edges, synthetic_graph(seed=1).num_nodes, val_frac=0.0, test_frac=0.0, n_cold=5)
