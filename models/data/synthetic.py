"""A synthetic recommender world with a known ground truth: a binary ``click`` and a regression ``rating``.

Users and items have latent vectors, a group/category and dense attributes; their affinity drives both tasks
(so the tasks are correlated, like MovieLens' two). Tests use it to check that models learn something, and
the demo's user simulator uses the same ``click_probability``/``expected_rating`` functions to answer
recommendations, so offline and online ground truth are one function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data.dataset import Side, TabularData, user_then_item
from models.layers import FeatureSpec, TaskSpec

TASKS = (TaskSpec("click", "binary"), TaskSpec("rating", "regression"))
SPARSE_COLUMNS = ("user_id", "user_group", "item_id", "item_category")
SPARSE_SIDES: tuple[Side, ...] = ("user", "user", "item", "item")


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 1000
    n_items: int = 500
    n_user_groups: int = 8
    n_item_categories: int = 12
    latent_dim: int = 4
    n_user_dense: int = 2
    n_item_dense: int = 2
    rating_noise: float = 0.5
    seed: int = 0


class SyntheticWorld:
    """Ids are 1-based (0 = out of vocabulary everywhere)."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = c = config or SyntheticConfig()
        rng = np.random.default_rng(c.seed)
        self.user_latent = rng.normal(size=(c.n_users + 1, c.latent_dim))
        self.item_latent = rng.normal(size=(c.n_items + 1, c.latent_dim))
        self.user_group = rng.integers(1, c.n_user_groups + 1, size=c.n_users + 1)
        self.item_category = rng.integers(1, c.n_item_categories + 1, size=c.n_items + 1)
        self.user_dense = rng.normal(size=(c.n_users + 1, c.n_user_dense)).astype(np.float32)
        self.item_dense = rng.normal(size=(c.n_items + 1, c.n_item_dense)).astype(np.float32)
        self.group_category_bias = rng.normal(scale=0.7, size=(c.n_user_groups + 1, c.n_item_categories + 1))
        self.user_dense_weight = rng.normal(scale=0.3, size=c.n_user_dense)
        self.item_dense_weight = rng.normal(scale=0.3, size=c.n_item_dense)

    def feature_spec(self, embedding_dim: int = 8) -> FeatureSpec:
        c = self.config
        return FeatureSpec(
            sparse_vocab_sizes=(c.n_users + 1, c.n_user_groups + 1, c.n_items + 1, c.n_item_categories + 1),
            n_dense=c.n_user_dense + c.n_item_dense,
            embedding_dim=embedding_dim,
            sparse_names=SPARSE_COLUMNS,
            dense_names=tuple(f"user_dense_{i}" for i in range(c.n_user_dense))
            + tuple(f"item_dense_{i}" for i in range(c.n_item_dense)),
        )

    def affinity(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """The latent score both tasks derive from."""
        latent = np.einsum("nk,nk->n", self.user_latent[user_ids], self.item_latent[item_ids])
        latent /= np.sqrt(self.config.latent_dim)
        bias = self.group_category_bias[self.user_group[user_ids], self.item_category[item_ids]]
        dense = (
            self.user_dense[user_ids] @ self.user_dense_weight
            + self.item_dense[item_ids] @ self.item_dense_weight
        )
        return latent + bias + dense

    def click_probability(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Ground-truth P(click | user, item)."""
        return 1.0 / (1.0 + np.exp(-(1.5 * self.affinity(user_ids, item_ids) - 1.0)))

    def expected_rating(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Ground-truth mean rating on a 1..5 scale."""
        return np.clip(3.0 + self.affinity(user_ids, item_ids), 1.0, 5.0)

    def features(self, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs ``sparse int64 [N, 4]``, ``dense float32 [N, D]`` for (user, item) pairs."""
        sparse = np.stack(
            [user_ids, self.user_group[user_ids], item_ids, self.item_category[item_ids]], axis=1
        ).astype(np.int64)
        dense = np.concatenate([self.user_dense[user_ids], self.item_dense[item_ids]], axis=1).astype(
            np.float32
        )
        return sparse, dense

    def item_table(self) -> dict[str, np.ndarray]:
        """``item_features.npz`` content: every item's item-side columns."""
        ids = np.arange(1, self.config.n_items + 1)
        return {
            "ids": ids.astype(np.int64),
            "sparse": np.stack([ids, self.item_category[ids]], axis=1).astype(np.int64),
            "dense": self.item_dense[ids].astype(np.float32),
        }

    def sample(self, n: int, seed: int = 0, embedding_dim: int = 8) -> TabularData:
        """``n`` random impressions with sampled labels."""
        rng = np.random.default_rng(seed)
        users = rng.integers(1, self.config.n_users + 1, size=n)
        items = rng.integers(1, self.config.n_items + 1, size=n)
        click = rng.random(n) < self.click_probability(users, items)
        noise = rng.normal(scale=self.config.rating_noise, size=n)
        rating = np.clip(self.expected_rating(users, items) + noise, 1.0, 5.0)
        sparse, dense = self.features(users, items)
        c = self.config
        return TabularData(
            features=self.feature_spec(embedding_dim),
            tasks=TASKS,
            sparse=sparse,
            dense=dense,
            labels=np.stack([click, rating], axis=1).astype(np.float32),
            sparse_sides=SPARSE_SIDES,
            dense_sides=user_then_item(c.n_user_dense, c.n_item_dense),
            item_id_column="item_id",
        )
