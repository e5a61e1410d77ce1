"""A seeded multi-flow world whose tasks are (ordering flow x use case) pairs, for GRec's routing comparison.

GRec's evaluation data (paper section 4.2, Table 1) is private: Verizon transactions whose tasks pair an ordering
*flow* (AAL add a line, EUP upgrade, NSE new customer) with a *use case* (CTR, CTCVR, ATC, CVR), trained with
task-sentence routing on "flow + use case". No public set has that structure (census has no flows; only ~100-row
AliExpress/Ali-CCP samples are available here), so this module generates one, with a ground truth whose task
structure is compositional in the same two parts:

* Impressions pair a user (segment, region, plan tier, device age; tenure, monthly spend) with an item
  (category, brand, price band, item id; price, rating) in a flow drawn per user segment (flows are imbalanced:
  AAL 0.45, EUP 0.35, NSE 0.20 on average), as in the paper.
* Every categorical value and every dense column has a latent vector; a user's latent ``u`` and an item's latent
  ``v`` are their sums. ``n_skills`` skill functions ``g_s(u, v) = tanh(u^T A_s v / k)`` are the ground-truth
  experts. The logit of use case ``c`` in flow ``f`` is ``b_c + b_f + sum_s w_fcs g_s(u, v)``: a common skill
  every task uses, ``skills_per_part`` skills chosen by the flow and as many chosen by the use case, with
  task-specific signs and scales. Tasks that share a flow or a use case share skills; no two tasks are equal.
* Labels: one Bernoulli outcome per use case for the row's flow (the T = 4 outputs of the zoo contract); the
  flow is an input column, which GRec reads as its auxiliary task token.

The data are generated on the fly from ``MultiFlowConfig`` (world seed) and a sample seed; nothing is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data.dataset import TabularData, user_then_item
from models.layers import FeatureSpec, TaskSpec

FLOWS = ("AAL", "EUP", "NSE")
USE_CASES = ("ctr", "ctcvr", "atc", "cvr")
TASKS = tuple(TaskSpec(name, "binary") for name in USE_CASES)
USER_COLUMNS = ("segment", "region", "plan_tier", "device_age")
ITEM_COLUMNS = ("category", "brand", "price_band", "item_id")
SPARSE_COLUMNS = ("flow", *USER_COLUMNS, *ITEM_COLUMNS)
DENSE_COLUMNS = ("tenure", "monthly_spend", "price", "rating")


@dataclass(frozen=True)
class MultiFlowConfig:
    """World sizes and the strength of its task structure (base rates of the four use cases in ``base_rate``)."""

    user_vocab: tuple[int, ...] = (8, 10, 5, 6)
    item_vocab: tuple[int, ...] = (12, 8, 6, 300)
    latent_dim: int = 8
    n_skills: int = 10
    skills_per_part: int = 2
    common_scale: float = 1.5
    skill_scale: float = 2.0
    base_rate: tuple[float, ...] = (0.12, 0.04, 0.06, 0.02)
    flow_weights: tuple[float, ...] = (0.45, 0.35, 0.20)
    seed: int = 0


class MultiFlowWorld:
    """Ids are 1-based per column (0 = out of vocabulary)."""

    def __init__(self, config: MultiFlowConfig | None = None) -> None:
        self.config = c = config or MultiFlowConfig()
        rng = np.random.default_rng(c.seed)
        k = c.latent_dim
        self.user_latent = [rng.normal(size=(v + 1, k)) for v in c.user_vocab]
        self.item_latent = [rng.normal(size=(v + 1, k)) for v in c.item_vocab]
        self.dense_latent = rng.normal(scale=0.5, size=(len(DENSE_COLUMNS), k))
        self.skill_maps = rng.normal(size=(c.n_skills, k, k))
        # flow mix per user segment: every segment leans to one flow (Dirichlet around the global weights)
        self.flow_given_segment = rng.dirichlet(8 * np.asarray(c.flow_weights), size=c.user_vocab[0] + 1)
        # task structure: skill 0 is common (same sign for every task: a general appeal); each flow and each use
        # case owns its own set of skills_per_part of the others (sets differ, skills may recur across sets)
        self.flow_skills = self._skill_sets(rng, len(FLOWS))
        self.use_case_skills = self._skill_sets(rng, len(USE_CASES))
        self.weights = np.zeros((len(FLOWS), len(USE_CASES), c.n_skills))
        for f in range(len(FLOWS)):
            for u in range(len(USE_CASES)):
                skills = np.unique([*self.flow_skills[f], *self.use_case_skills[u]])
                signs = rng.choice([-1.0, 1.0], size=len(skills))
                self.weights[f, u, skills] = c.skill_scale * signs * rng.uniform(0.5, 1.0, size=len(skills))
                self.weights[f, u, 0] = c.common_scale * rng.uniform(0.75, 1.0)
        self.flow_bias = rng.normal(scale=0.3, size=len(FLOWS))
        self.use_case_bias = np.log(np.asarray(c.base_rate) / (1 - np.asarray(c.base_rate)))

    def _skill_sets(self, rng: np.random.Generator, n: int) -> list[tuple[int, ...]]:
        """``n`` distinct sets of ``skills_per_part`` skills out of 1..n_skills-1."""
        sets: list[tuple[int, ...]] = []
        while len(sets) < n:
            draw = tuple(
                sorted(rng.choice(np.arange(1, self.config.n_skills), self.config.skills_per_part, False))
            )
            if draw not in sets:
                sets.append(draw)
        return sets

    def feature_spec(self, embedding_dim: int = 8) -> FeatureSpec:
        c = self.config
        return FeatureSpec(
            sparse_vocab_sizes=(
                len(FLOWS) + 1,
                *(v + 1 for v in c.user_vocab),
                *(v + 1 for v in c.item_vocab),
            ),
            n_dense=len(DENSE_COLUMNS),
            embedding_dim=embedding_dim,
            sparse_names=SPARSE_COLUMNS,
            dense_names=DENSE_COLUMNS,
        )

    def logits(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """Ground-truth logits ``[N, 4]`` of the use cases in each row's flow (columns as ``SPARSE_COLUMNS``)."""
        n_user = len(USER_COLUMNS)
        u = sum(table[sparse[:, 1 + i]] for i, table in enumerate(self.user_latent))
        v = sum(table[sparse[:, 1 + n_user + i]] for i, table in enumerate(self.item_latent))
        u = u + dense[:, :2] @ self.dense_latent[:2]
        v = v + dense[:, 2:] @ self.dense_latent[2:]
        k = self.config.latent_dim
        skills = np.tanh(np.einsum("nk,skl,nl->ns", u, self.skill_maps, v) / (2 * k))  # [N, S]
        flow = sparse[:, 0] - 1
        mixed = np.einsum("ns,nus->nu", skills, self.weights[flow])  # [N, 4]
        return mixed + self.flow_bias[flow, None] + self.use_case_bias[None, :]

    def sample(self, n: int, seed: int = 0, embedding_dim: int = 8) -> TabularData:
        """``n`` impressions with one sampled outcome per use case."""
        c = self.config
        rng = np.random.default_rng(seed)
        users = np.stack([rng.integers(1, v + 1, size=n) for v in c.user_vocab], axis=1)
        items = np.stack([rng.integers(1, v + 1, size=n) for v in c.item_vocab], axis=1)
        cumulative = self.flow_given_segment[users[:, 0]].cumsum(axis=1)
        flow = 1 + (rng.random((n, 1)) > cumulative).sum(axis=1, keepdims=True)
        sparse = np.concatenate([flow, users, items], axis=1).astype(np.int64)
        dense = rng.normal(size=(n, len(DENSE_COLUMNS))).astype(np.float32)
        labels = rng.random((n, len(USE_CASES))) < 1 / (1 + np.exp(-self.logits(sparse, dense)))
        return TabularData(
            features=self.feature_spec(embedding_dim),
            tasks=TASKS,
            sparse=sparse,
            dense=dense,
            labels=labels.astype(np.float32),
            sparse_sides=user_then_item(1 + len(USER_COLUMNS), len(ITEM_COLUMNS)),
            dense_sides=("user", "user", "item", "item"),
            item_id_column="item_id",
        )
