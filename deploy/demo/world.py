"""The demo's worlds: "people you may know", where the candidates a user is shown are other users.

``make_world`` picks the real one (ego-Facebook, ``deploy.demo.ego_facebook``) when given a data path, else the
synthetic one below. One synthetic world drives both stages, so both experiments act on the same users: the retrieval stage
searches a friendship graph whose edges were drawn from the ground truth, and the ranking stage scores
(user, candidate user) pairs whose clicks come from the same ground truth. Items are therefore users: item
``i`` has the latent vector, group and dense features of user ``i``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from deploy.demo.ego_facebook import EgoFacebookWorld
from deploy.demo.simulator import GroundTruth
from models.data.dataset import TabularData
from models.data.synthetic import SyntheticConfig, SyntheticWorld
from models.graph.datasets import Graph, canonical_edges


class DemoWorld(GroundTruth, Protocol):
    """What the demo trains on and simulates: ranking impressions, a friendship graph, the users to simulate."""

    # Read-only (properties): the worlds set these as class or instance attributes.
    @property
    def retrieval_dataset(self) -> dict[str, str]:
        """How the retrieval manifests name the data (dataset, data_path)."""
        ...

    @property
    def retrieval_model(self) -> dict[str, Any]:
        """SSMTL config overrides sized for the world."""
        ...

    @property
    def exclude_friends(self) -> bool:
        """Run retrieval with --exclude-neighbors."""
        ...

    def sample(self, n: int, seed: int = 0, embedding_dim: int = 8) -> TabularData: ...

    def item_table(self) -> dict[str, np.ndarray]: ...

    def friendship_graph(self) -> Graph: ...

    def simulated_users(self, count: int, seed: int) -> np.ndarray: ...


def make_world(data: Path | None, users: int, seed: int) -> DemoWorld:
    """ego-Facebook from ``data`` (its folder, or one holding ``ego-facebook/``) when given, else synthetic."""
    if data is None:
        return SocialWorld(n_users=users, seed=seed)
    return EgoFacebookWorld(data, seed=seed)


class SocialWorld(SyntheticWorld):
    """A ``SyntheticWorld`` whose items are its users (same latent vectors, groups and dense features)."""

    retrieval_dataset: ClassVar[dict[str, str]] = {"dataset": "synthetic"}
    retrieval_model: ClassVar[dict[str, Any]] = {}
    exclude_friends = False  # friends here are just likely clicks, drawn from the same ground truth

    def __init__(self, n_users: int = 1500, n_groups: int = 8, seed: int = 0) -> None:
        super().__init__(
            SyntheticConfig(
                n_users=n_users,
                n_items=n_users,
                n_user_groups=n_groups,
                n_item_categories=n_groups,
                n_user_dense=2,
                n_item_dense=2,
                seed=seed,
            )
        )
        self.item_latent = self.user_latent
        self.item_category = self.user_group
        self.item_dense = self.user_dense
        self.group_category_bias = (self.group_category_bias + self.group_category_bias.T) / 2
        self.seed = seed

    @property
    def n_items(self) -> int:
        return self.config.n_items

    def simulated_users(self, count: int, seed: int) -> np.ndarray:
        """Every user (the world was built with ``count`` of them)."""
        return np.arange(1, min(count, self.config.n_users) + 1)

    def user_features(self, user: int) -> tuple[list[int], list[float]]:
        """User-side model columns: sparse ``[user_id, user_group]``, dense ``user_dense``."""
        return [user, int(self.user_group[user])], self.user_dense[user].tolist()

    def click_probability(self, user_ids: np.ndarray | int, item_ids: np.ndarray) -> np.ndarray:
        """Ground-truth P(click); a user never clicks on themself."""
        users = np.broadcast_to(np.asarray(user_ids), np.shape(item_ids))
        p = super().click_probability(users, np.asarray(item_ids))
        return np.where(users == item_ids, 0.0, p)

    def friendship_graph(self, candidates_per_user: int = 60, feature_noise: float = 0.5) -> Graph:
        """Friendships drawn from the ground truth, and node features the encoder can learn from.

        Each user meets ``candidates_per_user`` random others and befriends each with its ground-truth click
        probability cubed (friendship is rarer than a click). Node features: the one-hot group, the dense
        features and a noisy view of the latent vector, so that a trained encoder beats the raw features.
        """
        rng = np.random.default_rng(self.seed + 1)
        n = self.config.n_users
        users = np.repeat(np.arange(1, n + 1), candidates_per_user)
        others = rng.integers(1, n + 1, size=users.shape[0])
        befriend = rng.random(users.shape[0]) < self.click_probability(users, others) ** 3
        edges = canonical_edges(np.stack([users[befriend], others[befriend]], axis=1) - 1)
        ids = np.arange(1, n + 1)
        one_hot = np.eye(self.config.n_user_groups + 1, dtype=np.float32)[self.user_group[ids]]
        latent = self.user_latent[ids] + rng.normal(scale=feature_noise, size=self.user_latent[ids].shape)
        features = np.concatenate([one_hot, self.user_dense[ids], latent.astype(np.float32)], axis=1)
        return Graph(edges=edges, features=features.astype(np.float32), node_ids=ids.astype(np.int64))
