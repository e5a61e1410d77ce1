"""Dense graph-attention blocks over fixed fan-out neighbourhoods (ONNX-exportable: no scatter, no sparse ops)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_MASKED = (
    1e9  # added (negated) to the attention logits of padding slots; finite so ONNX and fp16 stay NaN-free
)


class DenseGATLayer(nn.Module):
    """Graph attention (Velickovic et al., ICLR 2018) of each centre over itself and its neighbours.

    Neighbours come as a dense ``[N, K, D]`` tensor with a 0/1 mask; the centre always attends to itself (the
    self-loop), so a node without neighbours still gets a defined output. Heads are concatenated.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        heads: int = 4,
        attn_dropout: float = 0.1,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if out_dim % heads:
            raise ValueError(f"out_dim {out_dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = out_dim // heads
        self.proj = nn.Linear(in_dim, out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, self.head_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.negative_slope = negative_slope
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)

    def forward(self, centre: torch.Tensor, neighbours: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``centre`` [N, D_in], ``neighbours`` [N, K, D_in], ``mask`` [N, K] -> [N, out_dim]."""
        n, k = neighbours.shape[0], neighbours.shape[1]
        zc = self.proj(centre).reshape(n, 1, self.heads, self.head_dim)
        zn = self.proj(neighbours).reshape(n, k, self.heads, self.head_dim)
        z = torch.cat([zc, zn], dim=1)  # [N, K+1, H, Dh]
        slot_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # [N, K+1]
        logits = (z * self.att_src).sum(-1) + (zc * self.att_dst).sum(-1)  # [N, K+1, H]
        logits = F.leaky_relu(logits, self.negative_slope) + (slot_mask.unsqueeze(-1) - 1.0) * _MASKED
        weights = self.attn_dropout(torch.softmax(logits, dim=1))
        out = (weights.unsqueeze(-1) * z).sum(dim=1)  # [N, H, Dh]
        return out.reshape(n, self.heads * self.head_dim) + self.bias


class TwoHopGATEncoder(nn.Module):
    """Two GAT layers over a sampled two-hop tree: hop-1 nodes first aggregate their hop-2 children, then the
    query node aggregates the updated hop-1 nodes (GraphSAGE-style sampled message passing with attention).

    The input projection is applied per node, so a training step can project each distinct node once and gather
    (``embed_nodes`` + ``aggregate``) instead of projecting every sampled copy; both routes compute the same function.
    """

    def __init__(
        self,
        num_features: int,
        hidden_dim: int,
        embed_dim: int,
        fanouts: tuple[int, int],
        heads: int = 4,
        feat_dropout: float = 0.2,
        attn_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.fanouts = tuple(fanouts)
        self.feat_dropout = nn.Dropout(feat_dropout)
        self.input = nn.Linear(num_features, hidden_dim)
        self.layer1 = DenseGATLayer(hidden_dim, hidden_dim, heads, attn_dropout)
        self.layer2 = DenseGATLayer(hidden_dim, embed_dim, heads, attn_dropout)
        self.act1 = nn.PReLU()
        self.act2 = nn.PReLU()

    def embed_nodes(self, features: torch.Tensor) -> torch.Tensor:
        """Per-node input projection ``[..., F] -> [..., hidden]``."""
        return self.act1(self.input(self.feat_dropout(features)))

    def embed_sparse_rows(self, features: torch.Tensor) -> torch.Tensor:
        """``embed_nodes`` of a ``[N, F]`` matrix of mostly-zero rows through a sparse product (training only).

        Dropout acts on the non-zero entries alone, which is the same distribution as dropout on the dense
        matrix (a zero stays zero either way).
        """
        rows, cols = features.nonzero(as_tuple=True)
        values = self.feat_dropout(features[rows, cols])
        sparse = torch.sparse_coo_tensor(
            torch.stack([rows, cols]), values, features.shape, check_invariants=False, is_coalesced=True
        )
        return self.act1(torch.sparse.mm(sparse, self.input.weight.T) + self.input.bias)

    def aggregate(
        self, h0: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor
    ) -> torch.Tensor:
        """Projected query ``h0`` [B, D], hop-1 ``h1`` [B, f1, D], hop-2 ``h2`` [B, f1*f2, D] -> [B, E] (not normalised)."""
        f1, f2 = self.fanouts
        batch, dim = h0.shape[0], h0.shape[-1]
        query = self.act2(self.layer1(h0, h1, m1))
        hop1 = self.layer1(h1.reshape(-1, dim), h2.reshape(-1, f2, dim), m2.reshape(-1, f2))
        hop1 = self.act2(hop1).reshape(batch, f1, -1)
        return self.layer2(query, hop1, m1)

    def forward(
        self,
        node_features: torch.Tensor,
        hop1_features: torch.Tensor,
        hop2_features: torch.Tensor,
        hop1_mask: torch.Tensor,
        hop2_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Raw features in (the ONNX contract's tensors), unnormalised embedding ``[B, E]`` out."""
        return self.aggregate(
            self.embed_nodes(node_features),
            self.embed_nodes(hop1_features),
            self.embed_nodes(hop2_features),
            hop1_mask,
            hop2_mask,
        )
