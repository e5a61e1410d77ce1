"""Nearest-neighbour indexes over L2-normalised embeddings, inner-product similarity, built on faiss-cpu.

faiss-cpu was chosen over hnswlib and usearch by measurement (benchmarks/bench_retrieval.py; results in
benchmarks/results/retrieval*.md). At 20k random vectors the three HNSW implementations were close, faiss's with
the best recall at equal ef; at 1M random 64-d vectors faiss HNSW (the only graph build that fitted our CPU budget)
stayed far below recall@100 0.95, while faiss's 4-bit PQ fast-scan with exact re-ranking of ``k_factor * k``
candidates reached 0.96 at 8-15x the exact throughput (two runs) (random high-dimensional data is the hard case for graphs).
One library thus gives the exact index (``IndexFlatIP``, faster per query than numpy's matrix-vector product under
load), the quantised index, HNSW, and native id exclusion (``IDSelectorNot``) where the index supports it.
Small corpora use exact search; large ones ``"pq"`` (default) or ``"hnsw"``.
Each search runs on one thread: the server parallelises across requests, not inside one.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

logger = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 50_000  # up to this corpus size an exact scan is used
faiss.omp_set_num_threads(1)


def best_first(positions: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending score, equal scores by ascending position: faiss returns ties in an order that depends on k
    (top-3 [2, 1, 0], top-5 [4, 3, 2, 1, 0]), so a smaller k was no prefix of a larger one."""
    order = np.lexsort((positions, -scores))
    return positions[order].astype(np.int64), scores[order]


class FaissIndex:
    """Top-k inner-product search with excluded positions, over a faiss index holding positions 0..N-1."""

    kind = "exact"

    def __init__(self, index: faiss.Index, size: int) -> None:
        self._index = index
        self.size = size

    def _params(self, selector: faiss.IDSelector | None, k: int) -> faiss.SearchParameters | None:
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
        params = self._params(selector, k)
        scores, positions = self._index.search(np.ascontiguousarray(query, dtype=np.float32)[np.newaxis], k,
                                               params=params)
        keep = positions[0] >= 0  # -1 pads when fewer than k items remain after exclusion
        return best_first(positions[0][keep], scores[0][keep])


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
        self._exact = FaissIndex(faiss.downcast_index(index.storage), self.size)  # the same vectors, flat

    def _params(self, selector: faiss.IDSelector | None, k: int) -> faiss.SearchParameters:
        # faiss does not raise ef to k itself: a top 1000 at ef 400 returned 740 items on clustered vectors
        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
        if selector is not None:
            params.sel = selector
        return params

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph walk's top ``k``; an exact scan when the walk found fewer than remain to be found (many
        excluded items around the query, or a part of the graph it cannot reach)."""
        found, scores = super().search(query, k, exclude)
        if len(found) >= k:  # the usual case: nothing to count
            return found, scores
        exclude = np.unique(exclude)
        remaining = self.size - int(np.count_nonzero((exclude >= 0) & (exclude < self.size)))
        if len(found) < remaining:
            return self._exact.search(query, k, exclude)
        return found, scores


class QuantizedIndex(FaissIndex):
    """4-bit PQ fast-scan over all items, then exact inner products of the best ``k_factor * k`` candidates
    (at least ``min_candidates``).

    Fast-scan takes no id selector, so excluded positions are over-fetched and dropped. The floor on the
    re-rank pool is for small k: PQ codes blur the fine differences inside a cluster of similar items, and
    16 x 11 candidates held 43% of the exact top 10 on clustered vectors (1,000: 99.7%).
    """

    kind = "pq-refine"
    min_items = 16  # 4-bit codes: each sub-quantizer trains 2**4 centroids, faiss refuses fewer points

    def __init__(self, embeddings: np.ndarray, k_factor: int = 16, train_size: int = 100_000,
                 build_threads: int = 1, min_candidates: int = 1000) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        # PQ{dim/2} needs an even width: an odd one gets a zero column, which changes no inner product
        # (PQ16 over 33 dimensions failed the load in faiss)
        self._pad = embeddings.shape[1] % 2
        embeddings = self._padded(embeddings)
        dim = embeddings.shape[1]
        self.k_factor = k_factor
        self.min_candidates = min_candidates
        index = faiss.index_factory(dim, f"PQ{dim // 2}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
        faiss.omp_set_num_threads(build_threads)
        try:
            sample = embeddings[np.random.default_rng(0).permutation(len(embeddings))[:train_size]]
            index.train(sample)
            index.add(embeddings)
        finally:
            faiss.omp_set_num_threads(1)
        super().__init__(index, len(embeddings))

    def _padded(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` (one or many) with the zero column an odd width gets."""
        if not self._pad:
            return np.ascontiguousarray(vectors, dtype=np.float32)
        widths = [(0, 0)] * (vectors.ndim - 1) + [(0, self._pad)]
        return np.ascontiguousarray(np.pad(vectors, widths), dtype=np.float32)

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        exclude = np.unique(exclude)
        fetch = min(self.size, k + len(exclude))
        if min(k, self.size) <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        pool = min(self.size, max(self.k_factor * fetch, self.min_candidates))
        params = faiss.IndexRefineSearchParameters(k_factor=pool / fetch)
        scores, positions = self._index.search(self._padded(query)[np.newaxis], fetch, params=params)
        keep = (positions[0] >= 0) & ~np.isin(positions[0], exclude)
        found, found_scores = best_first(positions[0][keep], scores[0][keep])
        return found[:k], found_scores[:k]


ANN_KINDS = {"pq": QuantizedIndex, "hnsw": HNSWIndex}


def build_index(embeddings: np.ndarray, exact_max_items: int = EXACT_MAX_ITEMS, ann: str = "pq") -> FaissIndex:
    """Exact search for corpora up to ``exact_max_items``, the ``ann`` index (``"pq"`` or ``"hnsw"``) above.

    A corpus too small to train PQ is searched exactly too: its load must not fail (and exact is cheap there).
    """
    if len(embeddings) <= exact_max_items or (ann == "pq" and len(embeddings) < QuantizedIndex.min_items):
        return ExactIndex(embeddings)
    logger.info("building %s index over %d vectors", ann, len(embeddings))
    return ANN_KINDS[ann](embeddings)
