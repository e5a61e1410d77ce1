"""SSMTL: self-supervised multi-task GNN for friend-recommendation embedding-based retrieval.

Kolodner et al., "Robust Training Objectives Improve Embedding-based Retrieval in Industrial Recommendation
Systems", RobustRecSys workshop @ RecSys 2024, https://arxiv.org/abs/2409.14682.

A two-layer GAT encodes each user from its features and a sampled two-hop neighbourhood (fixed fan-out, dense
tensors). Training minimises Eq. 6, ``alpha * L_retrieval + beta * L_CCA + gamma * L_MAE``:

* Eq. 5 retrieval: softmax cross-entropy of query-candidate dot products with in-batch negatives (symmetric);
  a candidate that is a training friend of the query (label 1 in Eq. 5), the query itself or a repeated user is
  no negative.
* Eq. 3 CCA: the n nodes of the SSL queries' sampled two-hop subgraph (at most ``cca_nodes``; n >> embedding
  width, as standardising and decorrelating k columns needs), two views of each (edge drop + feature-column
  drop), a Linear-ReLU-Linear head, columns standardised to mean 0 and std 1/sqrt(n); invariance plus
  lambda * decorrelation.
* Eq. 4 MAE: query users' features replaced by a learnable [MASK] vector (plus edge drop), encoder, a linear head,
  re-masking (every query's hidden vector is zeroed, also where it is another query's neighbour), a one-layer GAT
  decoder over the uncorrupted first hop back to feature space, scaled cosine error with exponent
  ``mae_exponent`` (``y`` in the paper) on the masked queries.

The retrieval-only baseline (the paper's control) is the same model with ``beta = gamma = 0``.

Forward contract (differs from the ranking zoo, hence ``kind = "retrieval"``): ``forward(batch)`` takes the
retrieval ONNX inputs of docs/contracts.md, ``{"node_features": [B, F], "hop1_features": [B, f1, F],
"hop2_features": [B, f1*f2, F], "hop1_mask": [B, f1], "hop2_mask": [B, f1*f2]}`` (float32), and returns the
L2-normalised user embedding ``[B, E]``; scores are inner products. Training goes through ``training_losses``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.graph.layers import DenseGATLayer, TwoHopGATEncoder
from models.graph.sampling import Neighbourhood, NeighbourSampler
from models.registry import register_model

INPUT_NAMES = ("node_features", "hop1_features", "hop2_features", "hop1_mask", "hop2_mask")


@dataclass(frozen=True)
class SSMTLConfig:
    """Hyper-parameters. The benchmark (benchmarks/bench_ssmtl.py) and the demo's encoders use smaller widths
    and fan-outs than these defaults: hidden 64, embedding 32, fan-outs (5, 3)."""

    num_features: int
    hidden_dim: int = 128
    embed_dim: int = 64
    heads: int = 4
    fanouts: tuple[int, int] = (10, 5)
    feat_dropout: float = 0.2
    attn_dropout: float = 0.1
    temperature: float = 0.1
    alpha: float = 1.0  # Eq. 6 weight of the retrieval loss
    beta: float = 0.01  # Eq. 6 weight of the CCA loss
    gamma: float = 0.5  # Eq. 6 weight of the MAE loss
    cca_lambda: float = 1e-3  # Eq. 3 decorrelation weight
    mae_exponent: float = 2.0  # Eq. 4 exponent y >= 1
    edge_drop: float = 0.2  # both SSL views
    feature_drop: float = 0.2  # CCA views: probability of zeroing a whole feature column
    ssl_nodes: int = 64  # query users per step that the SSL losses use (the paper's cost constraint)
    cca_nodes: int = 256  # at most this many nodes of the SSL queries' subgraph enter Eq. 3 (n >> d = 32-64)

    def __post_init__(self) -> None:
        if self.mae_exponent < 1:
            raise ValueError(f"mae_exponent must be >= 1, got {self.mae_exponent}")
        if min(self.alpha, self.beta, self.gamma) < 0:
            raise ValueError("loss weights alpha, beta, gamma must be >= 0")
        if self.ssl_nodes < 1 or self.cca_nodes < 2:
            raise ValueError("ssl_nodes must be >= 1 and cca_nodes >= 2")
        object.__setattr__(self, "fanouts", tuple(int(f) for f in self.fanouts))


def retrieval_loss(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    temperature: float,
    not_negative: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 5: softmax cross-entropy over in-batch candidates; row i's positive is candidate i (both directions).

    ``not_negative`` ``[B, B]`` (bool, diagonal ignored) takes candidate j out of query i's softmax and query i
    out of candidate j's: Eq. 5 gives a true friend the label 1, so it must not count as a negative.
    """
    logits = queries @ candidates.T / temperature
    if not_negative is not None:
        off_diagonal = ~torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(not_negative.to(logits.device) & off_diagonal, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def in_batch_non_negatives(
    sampler: NeighbourSampler, queries: np.ndarray, candidates: np.ndarray
) -> torch.Tensor:
    """``[B, B]``: True at (i, j), j != i, where pair j's candidate is no negative for query i (and query i none
    for candidate j): a friend of query i in the training graph, query i itself, or a repeated user of the
    batch (a repeated query or candidate of training pairs is also a friend). Retrieval never returns known
    friends or the user (models.graph.metrics), so training must not push them away either.
    """
    q, c = queries[:, np.newaxis], candidates[np.newaxis, :]
    hits = sampler.are_neighbours(q, c) | (c == q) | (c == candidates[:, np.newaxis])
    hits |= queries[np.newaxis, :] == q
    np.fill_diagonal(hits, False)
    return torch.from_numpy(hits)


def standardise(z: torch.Tensor) -> torch.Tensor:
    """Columns to mean 0 and standard deviation 1/sqrt(n), as Eq. 3 requires."""
    z = z - z.mean(dim=0, keepdim=True)
    return z / (z.std(dim=0, unbiased=False, keepdim=True) + 1e-6) / z.shape[0] ** 0.5


def cca_loss(za: torch.Tensor, zb: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 3: ||Za - Zb||_F^2 + lam (||Za^T Za - I||_F^2 + ||Zb^T Zb - I||_F^2) on standardised views."""
    za, zb = standardise(za), standardise(zb)
    eye = torch.eye(za.shape[1], device=za.device)
    invariance = (za - zb).pow(2).sum()
    decorrelation = (za.T @ za - eye).pow(2).sum() + (zb.T @ zb - eye).pow(2).sum()
    return invariance + lam * decorrelation


def scaled_cosine_error(target: torch.Tensor, recon: torch.Tensor, exponent: float) -> torch.Tensor:
    """Eq. 4: mean over nodes of (1 - cos(x_i, z_i))^y; nodes with an all-zero target are skipped (cos undefined)."""
    valid = target.abs().sum(dim=1) > 0
    if not bool(valid.any()):
        return recon.sum() * 0.0
    cos = F.cosine_similarity(target[valid], recon[valid], dim=1)
    return (1.0 - cos).pow(exponent).mean()


def subgraph_nodes(nb: Neighbourhood) -> np.ndarray:
    """Distinct ids of the sampled subgraph: the centres and their real (unmasked) one- and two-hop nodes."""
    return np.unique(np.concatenate([nb.nodes, nb.hop1[nb.hop1_mask > 0], nb.hop2[nb.hop2_mask > 0]]))


class SSMTL(nn.Module):
    """GAT user encoder with the SSMTL training objective (see the module docstring for the contract)."""

    kind = "retrieval"

    def __init__(self, config: SSMTLConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = TwoHopGATEncoder(
            c.num_features, c.hidden_dim, c.embed_dim, c.fanouts, c.heads, c.feat_dropout, c.attn_dropout
        )
        self.cca_head = nn.Sequential(
            nn.Linear(c.embed_dim, c.embed_dim), nn.ReLU(), nn.Linear(c.embed_dim, c.embed_dim)
        )
        self.mask_token = nn.Parameter(torch.zeros(c.num_features))
        self.mae_head = nn.Linear(c.embed_dim, c.embed_dim, bias=False)
        self.decoder = DenseGATLayer(c.embed_dim, c.num_features, heads=1, attn_dropout=c.attn_dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Retrieval ONNX inputs in, L2-normalised embedding ``[B, E]`` out."""
        return F.normalize(self.encoder(*(batch[name] for name in INPUT_NAMES)), dim=-1)

    def training_config(self) -> dict:
        """The resolved config, JSON-ready (recorded in the package manifest)."""
        return {**asdict(self.config), "fanouts": list(self.config.fanouts)}

    def encode_sampled(
        self,
        nb: Neighbourhood,
        features: torch.Tensor,
        masks: tuple[np.ndarray, np.ndarray] | None = None,
        keep_columns: torch.Tensor | None = None,
        masked_nodes: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Unnormalised embeddings of ``nb.nodes`` reading node features from the full matrix ``features``.

        Each distinct node is projected once and gathered; the projection is a sparse product (profile bits are
        ~1% dense, so this is ~15x cheaper than the dense one and computes the same function). ``masks``
        overrides the neighbourhood masks (edge drop), ``keep_columns`` multiplies the features (feature drop),
        ``masked_nodes`` get the [MASK] vector.
        """
        f1, f2 = self.config.fanouts
        batch = len(nb.nodes)
        ids = np.concatenate([nb.nodes, nb.hop1.reshape(-1), nb.hop2.reshape(-1)])
        unique, inverse = np.unique(ids, return_inverse=True)
        x = features[torch.from_numpy(unique)]
        if keep_columns is not None:
            x = x * keep_columns
        projected = self.encoder.embed_sparse_rows(x)
        if masked_nodes is not None:
            # the [MASK] rows are dense (and start at zero): project them densely so the token gets its gradient
            replace = torch.from_numpy(np.flatnonzero(np.isin(unique, masked_nodes)))
            token = self.encoder.embed_nodes(self.mask_token.expand(len(replace), -1))
            projected = projected.index_put((replace,), token)
        table = projected[torch.from_numpy(inverse)]
        m1, m2 = masks if masks is not None else (nb.hop1_mask, nb.hop2_mask)
        return self.encoder.aggregate(
            table[:batch],
            table[batch : batch * (1 + f1)].reshape(batch, f1, -1),
            table[batch * (1 + f1) :].reshape(batch, f1 * f2, -1),
            torch.from_numpy(m1),
            torch.from_numpy(m2),
        )

    def embed_sampled(self, nb: Neighbourhood, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of ``nb.nodes`` (what ``forward`` computes, via the gather route)."""
        return F.normalize(self.encode_sampled(nb, features), dim=-1)

    def _drop_edges(self, nb: Neighbourhood, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        keep = 1.0 - self.config.edge_drop
        m1 = nb.hop1_mask * (rng.random(nb.hop1_mask.shape) < keep)
        f2 = self.config.fanouts[1]
        m2 = nb.hop2_mask * (rng.random(nb.hop2_mask.shape) < keep) * np.repeat(m1, f2, axis=1)
        return m1.astype(np.float32), m2.astype(np.float32)

    def _cca(
        self, nb: Neighbourhood, features: torch.Tensor, sampler: NeighbourSampler, rng: np.random.Generator
    ) -> torch.Tensor:
        """Eq. 3 over the nodes of ``nb``'s subgraph, each encoded from its own sampled neighbourhood per view."""
        nodes = subgraph_nodes(nb)
        if len(nodes) > self.config.cca_nodes:
            nodes = rng.choice(nodes, self.config.cca_nodes, replace=False)
        sub = sampler.sample(nodes, rng)
        views = []
        for _ in range(2):
            keep = torch.from_numpy(
                (rng.random(features.shape[1]) >= self.config.feature_drop).astype(np.float32)
            )
            h = self.encode_sampled(sub, features, masks=self._drop_edges(sub, rng), keep_columns=keep)
            views.append(self.cca_head(h))
        return cca_loss(views[0], views[1], self.config.cca_lambda)

    def _mae(
        self, nb: Neighbourhood, features: torch.Tensor, sampler: NeighbourSampler, rng: np.random.Generator
    ) -> torch.Tensor:
        f1 = self.config.fanouts[0]
        queries = nb.nodes
        # The decoder reads the encoded first hop, so encode those nodes too, on the same corrupted graph.
        hop1_nb = sampler.sample(nb.hop1.reshape(-1), rng)
        hidden_q = self.encode_sampled(nb, features, masks=self._drop_edges(nb, rng), masked_nodes=queries)
        hidden_n = self.encode_sampled(
            hop1_nb, features, masks=self._drop_edges(hop1_nb, rng), masked_nodes=queries
        )
        remasked = (
            self.mae_head(hidden_q) * 0.0
        )  # re-mask: the decoder must rebuild the queries from neighbours
        neighbours = self.mae_head(hidden_n).reshape(len(queries), f1, -1)
        # re-mask every query user, also where it is another query's neighbour (GraphMAE zeroes all masked rows)
        neighbours = neighbours * torch.from_numpy(~np.isin(nb.hop1, queries)).unsqueeze(-1)
        recon = self.decoder(remasked, neighbours, torch.from_numpy(nb.hop1_mask))
        return scaled_cosine_error(features[torch.from_numpy(queries)], recon, self.config.mae_exponent)

    def training_losses(
        self, features: torch.Tensor, sampler: NeighbourSampler, pairs: np.ndarray, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        """Eq. 6 and its terms for a batch of positive (query, candidate) pairs of training edges.

        Args:
            features: all node features ``[N, F]``.
            sampler: samples over training edges only.
            pairs: int64 ``[B, 2]``; each pair's edge is hidden from both endpoints' neighbourhoods.
            rng: drives sampling and augmentations.

        Returns:
            ``{"total", "retrieval", "cca", "mae"}`` (a term with weight 0 is not computed and reported as 0).
        """
        c = self.config
        queries, candidates = pairs[:, 0], pairs[:, 1]
        eq = F.normalize(
            self.encode_sampled(sampler.sample(queries, rng, exclude=candidates), features), dim=-1
        )
        ec = F.normalize(
            self.encode_sampled(sampler.sample(candidates, rng, exclude=queries), features), dim=-1
        )
        zero = eq.sum() * 0.0
        not_negative = in_batch_non_negatives(sampler, queries, candidates)
        losses = {"retrieval": retrieval_loss(eq, ec, c.temperature, not_negative), "cca": zero, "mae": zero}
        if c.beta > 0 or c.gamma > 0:
            distinct = np.unique(queries)
            ssl_queries = rng.choice(distinct, min(c.ssl_nodes, len(distinct)), replace=False)
            ssl_nb = sampler.sample(ssl_queries, rng)
            if c.beta > 0:
                losses["cca"] = self._cca(ssl_nb, features, sampler, rng)
            if c.gamma > 0:
                losses["mae"] = self._mae(ssl_nb, features, sampler, rng)
        losses["total"] = c.alpha * losses["retrieval"] + c.beta * losses["cca"] + c.gamma * losses["mae"]
        return losses


@register_model("ssmtl")
def ssmtl(**config: Any) -> SSMTL:
    """SSMTL GAT retriever; ``beta=0, gamma=0`` gives the retrieval-only baseline. Needs ``num_features``."""
    return SSMTL(SSMTLConfig(**config))
