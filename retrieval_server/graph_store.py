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
        with np.load(path) as data:
            return cls(data["ids"].astype(np.int64), data["indptr"].astype(np.int64),
                       data["indices"].astype(np.int64), data["features"].astype(np.float32), fanouts)

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
        last = max(len(self.indices) - 1, 0)
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
