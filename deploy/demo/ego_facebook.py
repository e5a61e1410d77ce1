"""The demo's world from real data: ego-Facebook's friendships, split into a past and a held-out future.

The models learn from the *visible* friendships (the past): the retrieval encoders from the graph, the rankers
from impressions whose clicks follow that graph. The simulated users click by the *held-out* friendships (the
future): a suggested person who later became a friend is clicked with ``p_friend``, anyone else with
``p_other``. No model ever sees a held-out edge, so a variant earns clicks only by predicting real friendships
it was not shown. The retrieval server runs with ``--exclude-neighbors``: existing friends are not suggestions.

Ids are node ids + 1 (0 is the ranking models' out-of-vocabulary row). Node attributes, all from the visible
past: the anonymised profile bits (the encoders' input), an ego-network group (the first of the ten egos the
user is a visible friend of, else the commonest group among their friends) and two dense values (log degree,
log profile size), standardised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.data.dataset import TabularData
from models.graph.datasets import EGO_IDS, Graph, load_ego_facebook
from models.graph.sampling import csr_adjacency
from models.layers import FeatureSpec, TaskSpec

TASKS = (TaskSpec("click", "binary"), TaskSpec("connect", "binary"))
SPARSE_COLUMNS = ("user_id", "user_group", "item_id", "item_group")
DENSE_COLUMNS = ("user_log_degree", "user_log_profile", "item_log_degree", "item_log_profile")
# Rows of ``sample``: a visible friend, a friend of a friend, anyone (the hard negatives a feed is made of).
SAMPLE_MIX = (0.3, 0.4, 0.3)


def _standardise(values: np.ndarray) -> np.ndarray:
    return ((values - values.mean()) / (values.std() + 1e-9)).astype(np.float32)


class EgoFacebookWorld:
    """Ground truth and model inputs of the "people you may know" demo on ego-Facebook."""

    # The encoders' size for 4,039 nodes x 1,283 profile bits within the demo's time (benchmarks/results/ssmtl*.md).
    retrieval_model: ClassVar[dict[str, Any]] = {"hidden_dim": 64, "embed_dim": 32, "fanouts": [5, 3]}
    exclude_friends = True

    def __init__(
        self,
        root: str | Path,
        seed: int = 0,
        held_out: float = 0.2,
        p_friend: float = 0.5,
        p_other: float = 0.02,
        verify: bool = True,
    ) -> None:
        """``root``: the ego-Facebook folder, or a data folder holding ``ego-facebook/`` (as ``../shared/data``).

        ``verify`` checks the official sha256 of every file (off only for files in the same layout, as in tests).
        """
        root = Path(root)
        root = root / "ego-facebook" if (root / "ego-facebook").is_dir() else root
        graph = load_ego_facebook(root, verify=verify)
        self.retrieval_dataset = {"dataset": "ego-facebook", "data_path": str(root)}
        self.seed = seed
        self.p_friend, self.p_other = p_friend, p_other
        self.n_users = n = graph.num_nodes
        order = np.random.default_rng(seed).permutation(len(graph.edges))
        cut = int(round(held_out * len(order)))
        self.held_out_edges = graph.edges[order[:cut]] + 1
        self.visible_edges = graph.edges[order[cut:]] + 1
        self._held_out_keys = self._pair_keys(self.held_out_edges)
        self._visible_keys = self._pair_keys(self.visible_edges)
        self._indptr, self._friends = csr_adjacency(n + 1, self.visible_edges)  # ids 1..n, row 0 empty
        self.profile_bits = graph.features
        self.group = self._ego_groups()
        degree = np.diff(self._indptr)
        profile = np.concatenate([[0.0], graph.features.sum(axis=1)])
        self.dense = np.stack([_standardise(np.log1p(degree)), _standardise(np.log1p(profile))], axis=1)

    @property
    def n_items(self) -> int:
        return self.n_users

    def _pair_keys(self, edges: np.ndarray) -> np.ndarray:
        """Sorted keys of both directions of each edge, for vectorised membership tests."""
        u, v = edges[:, 0], edges[:, 1]
        return np.sort(np.concatenate([u * (self.n_users + 1) + v, v * (self.n_users + 1) + u]))

    def _contains(self, keys: np.ndarray, users: np.ndarray, others: np.ndarray) -> np.ndarray:
        query = np.asarray(users, np.int64) * (self.n_users + 1) + np.asarray(others, np.int64)
        at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return keys[at] == query

    def friends(self, user: int) -> np.ndarray:
        """Visible friends of ``user``."""
        return self._friends[self._indptr[user] : self._indptr[user + 1]]

    def _ego_groups(self) -> np.ndarray:
        group = np.zeros(self.n_users + 1, dtype=np.int64)
        for index in range(len(EGO_IDS), 0, -1):  # descending, so the first ego a user knows wins
            ego = EGO_IDS[index - 1] + 1
            group[np.append(self.friends(ego), ego)] = index
        for user in (np.flatnonzero(group[1:] == 0) + 1).tolist():
            known = group[self.friends(user)]
            known = known[known > 0]
            if len(known):
                group[user] = np.bincount(known).argmax()
        return group

    def click_probability(self, user_ids: np.ndarray | int, item_ids: np.ndarray) -> np.ndarray:
        """Ground truth: ``p_friend`` for a held-out friendship, ``p_other`` otherwise, 0 for oneself."""
        users = np.broadcast_to(np.asarray(user_ids), np.shape(item_ids))
        p = np.where(self._contains(self._held_out_keys, users, item_ids), self.p_friend, self.p_other)
        return np.where(users == item_ids, 0.0, p)

    def user_features(self, user: int) -> tuple[list[int], list[float]]:
        """User-side model columns: sparse ``[user_id, user_group]``, dense ``[log degree, log profile]``."""
        return [user, int(self.group[user])], self.dense[user].tolist()

    def feature_spec(self, embedding_dim: int = 8) -> FeatureSpec:
        groups = len(EGO_IDS) + 1
        return FeatureSpec(
            sparse_vocab_sizes=(self.n_users + 1, groups, self.n_users + 1, groups),
            n_dense=len(DENSE_COLUMNS),
            embedding_dim=embedding_dim,
            sparse_names=SPARSE_COLUMNS,
            dense_names=DENSE_COLUMNS,
        )

    def item_table(self) -> dict[str, np.ndarray]:
        """``item_features.npz`` content: every user as a candidate."""
        ids = np.arange(1, self.n_users + 1)
        return {
            "ids": ids.astype(np.int64),
            "sparse": np.stack([ids, self.group[ids]], axis=1).astype(np.int64),
            "dense": self.dense[ids],
        }

    def _random_friend(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniformly chosen visible friend of each user; a random user for those without one."""
        start, degree = self._indptr[users], self._indptr[users + 1] - self._indptr[users]
        picked = self._friends[np.minimum(start + (rng.random(len(users)) * degree).astype(np.int64),
                                          len(self._friends) - 1)]
        return np.where(degree > 0, picked, rng.integers(1, self.n_users + 1, len(users)))

    def sample(self, n: int, seed: int = 0, embedding_dim: int = 8) -> TabularData:
        """``n`` past impressions: clicks and connections follow the *visible* friendships.

        A row shows a visible friend, a friend of a friend or anyone (``SAMPLE_MIX``); ``click`` is drawn with the
        ground truth's probabilities applied to the visible graph, ``connect`` says whether the two are friends.
        """
        rng = np.random.default_rng(seed)
        users = rng.integers(1, self.n_users + 1, n)
        kind = rng.choice(3, size=n, p=SAMPLE_MIX)
        friend = self._random_friend(users, rng)
        items = np.select(
            [kind == 0, kind == 1], [friend, self._random_friend(friend, rng)], rng.integers(1, self.n_users + 1, n)
        )
        items = np.where(items == users, rng.integers(1, self.n_users + 1, n), items)
        connect = self._contains(self._visible_keys, users, items) & (items != users)
        click = rng.random(n) < np.where(connect, self.p_friend, self.p_other)
        sparse = np.stack([users, self.group[users], items, self.group[items]], axis=1).astype(np.int64)
        return TabularData(
            features=self.feature_spec(embedding_dim),
            tasks=TASKS,
            sparse=sparse,
            dense=np.concatenate([self.dense[users], self.dense[items]], axis=1),
            labels=np.stack([click, connect], axis=1).astype(np.float32),
            sparse_sides=("user", "user", "item", "item"),
            dense_sides=("user", "user", "item", "item"),
            item_id_column="item_id",
        )

    def friendship_graph(self) -> Graph:
        """The visible graph for the retrieval encoders (node ``i`` has id ``i + 1``)."""
        return Graph(
            edges=self.visible_edges - 1,
            features=self.profile_bits,
            node_ids=np.arange(1, self.n_users + 1, dtype=np.int64),
        )

    def simulated_users(self, count: int, seed: int) -> np.ndarray:
        """``count`` distinct users (all of them when fewer), sorted."""
        count = min(count, self.n_users)
        return np.sort(np.random.default_rng(seed).choice(self.n_users, count, replace=False) + 1)
