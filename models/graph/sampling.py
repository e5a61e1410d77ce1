"""Fixed fan-out two-hop neighbourhood sampling into dense tensors.

Dense, fixed-shape neighbourhoods (``[B, f1]`` and ``[B, f1 * f2]`` ids plus 0/1 masks) are what lets the GAT
encoder export to a static ONNX graph. A node with at most ``f`` neighbours keeps all of them (the rest is padding,
mask 0); a node with more gets ``f`` distinct neighbours by systematic sampling (evenly spaced offsets from a random
start), which never repeats a neighbour. Padding slots hold id 0 so gathers stay in range.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Neighbourhood:
    """Sampled two-hop neighbourhoods of ``nodes``: ids and masks (1 = real neighbour), all numpy arrays."""

    nodes: np.ndarray  # int64 [B]
    hop1: np.ndarray  # int64 [B, f1]
    hop1_mask: np.ndarray  # float32 [B, f1]
    hop2: np.ndarray  # int64 [B, f1 * f2]; children of hop1[:, j] are hop2[:, j*f2:(j+1)*f2]
    hop2_mask: np.ndarray  # float32 [B, f1 * f2]

    def rows(self, start: int, stop: int) -> Neighbourhood:
        """The neighbourhoods of ``nodes[start:stop]``."""
        part = slice(start, stop)
        return Neighbourhood(
            self.nodes[part], self.hop1[part], self.hop1_mask[part], self.hop2[part], self.hop2_mask[part]
        )


def csr_adjacency(num_nodes: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of undirected ``edges`` over nodes ``0..num_nodes-1``: node ``u``'s neighbours, sorted, are
    ``indices[indptr[u]:indptr[u + 1]]``."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    both = np.concatenate([edges, edges[:, ::-1]], axis=0)
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    indptr = np.searchsorted(both[:, 0], np.arange(num_nodes + 1)).astype(np.int64)
    return indptr, both[:, 1].copy()


class NeighbourSampler:
    """Samples neighbourhoods from a CSR adjacency built once from undirected edges."""

    def __init__(self, num_nodes: int, edges: np.ndarray, fanouts: tuple[int, int]) -> None:
        self.num_nodes = num_nodes
        self.fanouts = fanouts
        self.indptr, self.indices = csr_adjacency(num_nodes, edges)

    @classmethod
    def from_csr(cls, indptr: np.ndarray, indices: np.ndarray, fanouts: tuple[int, int]) -> NeighbourSampler:
        """Rebuild a sampler from stored CSR arrays (as kept in a retrieval index)."""
        sampler = cls.__new__(cls)
        sampler.num_nodes = len(indptr) - 1
        sampler.fanouts = fanouts
        sampler.indptr = np.asarray(indptr, dtype=np.int64)
        sampler.indices = np.asarray(indices, dtype=np.int64)
        return sampler

    def degree(self) -> np.ndarray:
        """Degree of every node in the sampling graph."""
        return np.diff(self.indptr)

    @cached_property
    def _edge_keys(self) -> np.ndarray:
        """``u * num_nodes + v`` of every stored (u, v): ascending, as CSR rows and each row's ids are sorted."""
        rows = np.repeat(np.arange(self.num_nodes, dtype=np.int64), np.diff(self.indptr))
        return rows * self.num_nodes + self.indices

    def are_neighbours(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Whether ``v`` is a neighbour of ``u`` in the sampling graph, elementwise (numpy broadcasting)."""
        keys = np.asarray(u, dtype=np.int64) * self.num_nodes + np.asarray(v, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._edge_keys, keys), max(len(self._edge_keys) - 1, 0))
        return self._edge_keys[pos] == keys if len(self._edge_keys) else np.zeros(keys.shape, dtype=bool)

    def sample_neighbours(
        self, nodes: np.ndarray, fanout: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``fanout`` distinct neighbours of each node: ids ``[B, fanout]`` and float mask."""
        nodes = np.asarray(nodes, dtype=np.int64)
        start = self.indptr[nodes]
        deg = self.indptr[nodes + 1] - start
        slot = np.arange(fanout)[np.newaxis, :]
        spread = (rng.random((len(nodes), 1)) + slot / fanout) * deg[:, np.newaxis]
        offset = np.where(
            deg[:, np.newaxis] <= fanout,
            slot,
            np.floor(spread).astype(np.int64) % np.maximum(deg, 1)[:, None],
        )
        mask = slot < deg[:, np.newaxis]
        ids = np.where(
            mask, self.indices[np.minimum(start[:, np.newaxis] + offset, max(len(self.indices) - 1, 0))], 0
        )
        return ids.astype(np.int64), mask.astype(np.float32)

    def expand(
        self, hop1: np.ndarray, hop1_mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Second hop for given first-hop ids: ``[B, f1 * f2]`` ids and mask (padding parents get no children)."""
        batch, f1 = hop1.shape
        f2 = self.fanouts[1]
        hop2, mask2 = self.sample_neighbours(hop1.reshape(-1), f2, rng)
        mask2 = mask2 * hop1_mask.reshape(-1, 1)
        return hop2.reshape(batch, f1 * f2), mask2.reshape(batch, f1 * f2).astype(np.float32)

    def sample(
        self, nodes: np.ndarray, rng: np.random.Generator, exclude: np.ndarray | None = None
    ) -> Neighbourhood:
        """Two-hop neighbourhoods of ``nodes``; ``exclude[i]`` (one id per node, e.g. the positive of a training
        pair) is masked out wherever it appears so the encoder cannot read the answer off the graph."""
        nodes = np.asarray(nodes, dtype=np.int64)
        hop1, mask1 = self.sample_neighbours(nodes, self.fanouts[0], rng)
        if exclude is not None:
            mask1 = mask1 * (hop1 != exclude[:, np.newaxis])
        hop2, mask2 = self.expand(hop1, mask1, rng)
        if exclude is not None:
            mask2 = mask2 * (hop2 != exclude[:, np.newaxis])
        return Neighbourhood(nodes, hop1, mask1.astype(np.float32), hop2, mask2.astype(np.float32))
