"""Nearest-neighbour indexes over L2-normalised embeddings, inner-product similarity, built on faiss-cpu.

faiss-cpu was chosen over hnswlib and usearch by measurement (benchmarks/bench_retrieval.py,
benchmarks/results/retrieval.md): at equal HNSW settings its HNSW reached the highest recall@100 per query/s on
the 1M random set, and the same library gives the exact index (``IndexFlatIP``, a SIMD scan several times faster
per query than numpy's matrix-vector product under load) and native id exclusion (``IDSelectorNot``) for both,
so excluded ids cost no over-fetching. Small corpora use exact search; large ones HNSW.
Each search runs on one thread: the server parallelises across requests, not inside one.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

logger = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 50_000  # up to this corpus size an exact scan is used
faiss.omp_set_num_threads(1)


class FaissIndex:
    """Top-k inner-product search with excluded positions, over a faiss index holding positions 0..N-1."""

    kind = "exact"

    def __init__(self, index: faiss.Index, size: int) -> None:
        self._index = index
        self.size = size

    def _params(self, selector: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        return None if selector is None else faiss.SearchParameters(sel=selector)

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` positions and scores for one query vector, best first, skipping positions in ``exclude``."""
        k = min(k, self.size)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        exclude = np.unique(exclude).astype(np.int64)
        # Keep both selectors referenced until the search returns (faiss does not own them).
        batch = faiss.IDSelectorBatch(exclude) if len(exclude) else None
        selector = faiss.IDSelectorNot(batch) if batch is not None else None
        params = self._params(selector)
        scores, positions = self._index.search(np.ascontiguousarray(query, dtype=np.float32)[np.newaxis], k,
                                               params=params)
        keep = positions[0] >= 0  # -1 pads when fewer than k items remain after exclusion
        return positions[0][keep].astype(np.int64), scores[0][keep]


class ExactIndex(FaissIndex):
    """Brute-force inner product (exact)."""

    kind = "exact"

    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        index = faiss.IndexFlatIP(self.embeddings.shape[1])
        index.add(self.embeddings)
        super().__init__(index, len(self.embeddings))


class HNSWIndex(FaissIndex):
    """Approximate search with an HNSW graph (``IndexHNSWFlat``); ``ef_search`` trades recall for speed."""

    kind = "hnsw"

    def __init__(self, embeddings: np.ndarray, m: int = 16, ef_construction: int = 100, ef_search: int = 400,
                 build_threads: int = 1) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        index = faiss.IndexHNSWFlat(embeddings.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        faiss.omp_set_num_threads(build_threads)
        try:
            index.add(embeddings)
        finally:
            faiss.omp_set_num_threads(1)
        self.ef_search = ef_search
        super().__init__(index, len(embeddings))

    def _params(self, selector: faiss.IDSelector | None) -> faiss.SearchParameters:
        params = faiss.SearchParametersHNSW(efSearch=self.ef_search)
        if selector is not None:
            params.sel = selector
        return params


def build_index(embeddings: np.ndarray, exact_max_items: int = EXACT_MAX_ITEMS, **hnsw: int) -> FaissIndex:
    """Exact search for corpora up to ``exact_max_items``, HNSW above."""
    if len(embeddings) <= exact_max_items:
        return ExactIndex(embeddings)
    logger.info("building HNSW over %d vectors", len(embeddings))
    return HNSWIndex(embeddings, **hnsw)
