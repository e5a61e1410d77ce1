"""The graph a retrieval package was indexed on: node ids, CSR adjacency and node features.

It lets the server embed a user unseen at indexing time: the request brings the user's features and the ids of
known neighbours; the second hop is sampled here from the stored adjacency, with the same fixed fan-outs and the
same rule as training (all neighbours when there are at most ``f``, else ``f`` distinct ones by systematic sampling)
so the ONNX encoder sees exactly the tensor layout it was exported with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GraphStore:
    ids: np.ndarray  # int64 [N], external node ids by position
    indptr: np.ndarray  # int64 [N + 1]
    indices: np.ndarray  # int64, neighbour positions
    features: np.ndarray  # float32 [N, F]
    fanouts: tuple[int, int]

    @classmethod
    def load(cls, path: Path, fanouts: tuple[int, int]) -> GraphStore:
        """Read and check ``graph.npz``.

        Raises:
            ValueError: a missing array or an inconsistent graph (the reason, without the path).
        """
        with np.load(path) as data:
            missing = [key for key in ("ids", "indptr", "indices", "features") if key not in data.files]
            if missing:
                raise ValueError(f"no {', '.join(missing)} array")
            store = cls(
                data["ids"].astype(np.int64),
                data["indptr"].astype(np.int64),
                data["indices"].astype(np.int64),
                data["features"].astype(np.float32),
                fanouts,
            )
        store.check()
        return store

    def check(self) -> None:
        """Refuse what would fail or mislead only at request time: an id at two positions (answers with one
        id twice, excluding it drops only one), no node at all, CSR arrays that point outside the graph.

        Raises:
            ValueError: the first problem found.
        """
        n = len(self.ids)
        if self.ids.ndim != 1 or n == 0:
            raise ValueError(f"ids must be a non-empty 1-d array, got shape {self.ids.shape}")
        unique, counts = np.unique(self.ids, return_counts=True)
        if len(unique) != n:
            first = int(np.argmax(counts > 1))
            raise ValueError(f"node id {int(unique[first])} appears {int(counts[first])} times")
        if self.features.ndim != 2 or len(self.features) != n:
            raise ValueError(f"features must have one row per id ({n}), got shape {self.features.shape}")
        if self.indptr.shape != (n + 1,) or self.indptr[0] != 0 or self.indptr[-1] != len(self.indices):
            raise ValueError(f"indptr must hold {n + 1} offsets from 0 to {len(self.indices)} (the indices)")
        if np.any(np.diff(self.indptr) < 0):
            raise ValueError("indptr must not decrease")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
            raise ValueError(f"indices must be positions in 0..{n - 1}")

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    def position_map(self) -> dict[int, int]:
        """External id -> position."""
        return {int(node): pos for pos, node in enumerate(self.ids)}

    def neighbours(self, position: int) -> np.ndarray:
        """Positions adjacent to ``position`` in the stored graph."""
        return self.indices[self.indptr[position] : self.indptr[position + 1]]

    def _sample(self, positions: np.ndarray, fanout: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        start = self.indptr[positions]
        deg = self.indptr[positions + 1] - start
        slot = np.arange(fanout)[np.newaxis, :]
        spread = np.floor((rng.random((len(positions), 1)) + slot / fanout) * deg[:, np.newaxis]).astype(np.int64)
        offset = np.where(deg[:, np.newaxis] <= fanout, slot, spread % np.maximum(deg, 1)[:, np.newaxis])
        mask = slot < deg[:, np.newaxis]
        if len(self.indices) == 0:  # a graph without edges: nobody has a neighbour (indexing it raised)
            return np.zeros(mask.shape, np.int64), mask.astype(np.float32)
        last = len(self.indices) - 1
        picked = np.where(mask, self.indices[np.minimum(start[:, np.newaxis] + offset, last)], 0)
        return picked.astype(np.int64), mask.astype(np.float32)

    def encoder_inputs(
        self, features: np.ndarray, neighbour_positions: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """ONNX inputs (batch of one) for a new user with ``features`` [F] adjacent to known positions."""
        f1, f2 = self.fanouts
        neighbours = np.unique(np.asarray(neighbour_positions, dtype=np.int64))
        if len(neighbours) > f1:
            spread = np.floor((rng.random() + np.arange(f1) / f1) * len(neighbours)).astype(np.int64)
            neighbours = neighbours[spread % len(neighbours)]
        hop1 = np.zeros(f1, dtype=np.int64)
        mask1 = np.zeros(f1, dtype=np.float32)
        hop1[: len(neighbours)] = neighbours
        mask1[: len(neighbours)] = 1.0
        hop2, mask2 = self._sample(hop1, f2, rng)
        mask2 = mask2 * mask1[:, np.newaxis]
        return {
            "node_features": features.astype(np.float32)[np.newaxis],
            "hop1_features": self.features[hop1][np.newaxis],
            "hop2_features": self.features[hop2.reshape(-1)][np.newaxis],
            "hop1_mask": mask1[np.newaxis],
            "hop2_mask": mask2.reshape(1, f1 * f2),
        }
