"""Nearest-neighbour indexes over L2-normalised embeddings, inner-product similarity.

``ExactIndex`` (one matrix-vector product) serves small corpora, where it is both exact and fast enough;
``HNSWIndex`` (hnswlib) serves large ones. hnswlib was chosen over faiss-cpu (HNSW and IVF-Flat) and usearch by
measurement: see benchmarks/bench_retrieval.py and benchmarks/results/retrieval.md.
Both return positions into the embedding matrix, best first, after dropping excluded positions.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 50_000  # up to this corpus size an exact scan is used


class VectorIndex(Protocol):
    """What the data plane needs from an index."""

    size: int
    kind: str

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` positions and scores for one query vector, skipping positions in ``exclude``."""
        ...


class ExactIndex:
    """Brute-force inner product (exact)."""

    kind = "exact"

    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.size = len(self.embeddings)

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = self.embeddings @ query.astype(np.float32)
        if len(exclude):
            scores[exclude] = -np.inf
        k = min(k, self.size - len(np.unique(exclude)))
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top.astype(np.int64), scores[top]


class HNSWIndex:
    """Approximate search with an hnswlib HNSW graph; over-fetches to make room for excluded positions."""

    kind = "hnsw"

    def __init__(self, embeddings: np.ndarray, m: int = 32, ef_construction: int = 100, ef_search: int = 256,
                 threads: int = 1) -> None:
        import hnswlib

        self.size = len(embeddings)
        self.ef_search = ef_search
        self._index = hnswlib.Index(space="ip", dim=embeddings.shape[1])
        self._index.init_index(max_elements=self.size, ef_construction=ef_construction, M=m)
        self._index.set_num_threads(threads)
        self._index.add_items(np.ascontiguousarray(embeddings, dtype=np.float32), np.arange(self.size))
        self._index.set_num_threads(1)

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        excluded = set(exclude.tolist())
        k = min(k, self.size - len(excluded))
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        fetch = min(self.size, k + len(excluded))
        self._index.set_ef(max(self.ef_search, fetch))
        labels, distances = self._index.knn_query(query.astype(np.float32)[np.newaxis], k=fetch)
        keep = np.array([label not in excluded for label in labels[0]], dtype=bool)
        positions = labels[0][keep][:k].astype(np.int64)
        return positions, (1.0 - distances[0][keep][:k]).astype(np.float32)  # hnswlib "ip" distance = 1 - <a, b>


def build_index(embeddings: np.ndarray, exact_max_items: int = EXACT_MAX_ITEMS, **hnsw: int) -> VectorIndex:
    """Exact search for corpora up to ``exact_max_items``, HNSW above."""
    if len(embeddings) <= exact_max_items:
        return ExactIndex(embeddings)
    logger.info("building HNSW over %d vectors", len(embeddings))
    return HNSWIndex(embeddings, **hnsw)
