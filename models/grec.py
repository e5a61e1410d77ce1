"""GRec, the Generalist Recommender: wide & deep tokens, a parallel transformer with multi-query attention and a
task-sentence routed sparse MoE layer.

Paper: L. Wang, C. Tang, C. Zhang, J. Ruan, K. Huang, J. Dai, "Efficient Multi-Task Learning via Generalist
Recommender", CIKM'23, https://doi.org/10.1145/3583780.3615229 (reference code: intel-analytics BigDL/ipex-llm,
python/friesian/example/GRec).

How the paper maps onto the zoo's ``[B, T]`` contract. GRec is one network conditioned on a *task sentence*
(the main task token plus auxiliary task tokens, e.g. the paper's "flow" AAL/EUP/NSE next to CTR/CVR). Every row
is therefore run once per task: the sequence of a (row, task) pair is

    [main-task token, auxiliary task tokens..., wide token, deep tokens (one per categorical column, or per
     group of columns with ``deep_tokens``)]

(section 3.1: categorical columns -> embeddings, numeric columns -> normalisation + feed-forward). Auxiliary task
tokens come from categorical columns named in ``aux_task_columns``; they are per-row descriptors, as the paper's
flows are. The sequence goes through parallel transformer blocks (Eq. 4, PaLM style, multi-query attention with
one shared K/V head) and one sparse MoE layer whose router reads (Eq. 5-8):

* ``token``: each token's own state, each token picks its own top-k experts;
* ``sentence``: the whole sequence (section 3.3 text: the token representations concatenated, which is what
  makes Table 1's sentence routing cost as much as token routing; ``sentence_pooling="mean"`` gives Eq. 6
  literally), one expert choice broadcast to every token;
* ``task``: the main task embedding only (Eq. 7), the same experts for every row of a task;
* ``task_sentence``: the mean of the task-sentence token embeddings (Eq. 8).

Token routing has a per-sequence expert capacity (GShard order: all first choices before second choices,
tokens in sequence order); assignments over capacity are dropped and the token passes through the residual.
The sequence-level modes send the whole sequence to the experts chosen for it (Task-MoE, the paper's model for
task routing, extracts the chosen experts as the task's sub-network): a capacity below the sequence length
would drop the same trailing tokens of every sequence from every expert. Router input jitter (x U(0.9, 1.1) in
training) and the router losses, Switch load balance and ST-MoE z-loss weighted 1e-4 each, are the reference MoE
layer's (the paper names none of them). One head serves every task, as in the reference code: a task differs
from another only by its task sentence. Everything uses static shapes (topk, scatter_add, gather) so the
routing stays in the ONNX graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.base import Batch, ModelConfigError, MultiTaskModel, build_config
from models.layers import Expert, FeatureEmbedding, FeatureSpec, TaskSpec, Tower, typed_modules
from models.registry import register_model

RoutingMode = Literal["token", "sentence", "task", "task_sentence"]
ROUTING_MODES: tuple[RoutingMode, ...] = ("token", "sentence", "task", "task_sentence")


@dataclass(frozen=True)
class GRecConfig:
    """GRec sizes. Defaults follow the paper's MoE (8 experts, top-4, capacity 2 tokens for its 5-token
    sequences = capacity factor 0.8, for token routing) and task-sentence routing; router jitter and loss
    weights follow the reference code; widths are scaled to tabular data. ``deep_tokens`` groups the
    categorical columns into that many deep tokens (None: one token per column)."""

    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 1
    ff_mult: int = 4
    n_experts: int = 8
    top_k: int = 4
    routing: RoutingMode = "task_sentence"
    sentence_pooling: Literal["concat", "mean"] = "concat"
    capacity_factor: float = 0.8
    expert_capacity: int | None = None
    expert_hidden: int = 64
    aux_task_columns: tuple[str, ...] = ()
    deep_tokens: int | None = None
    tower_hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0
    router_jitter: float = 0.1
    balance_coef: float = 1e-4
    z_loss_coef: float = 1e-4

    def __post_init__(self) -> None:
        if self.routing not in ROUTING_MODES:
            raise ModelConfigError(f"GRecConfig.routing: {self.routing!r} is not one of {ROUTING_MODES}")
        if self.sentence_pooling not in ("concat", "mean"):
            raise ModelConfigError(
                f"GRecConfig.sentence_pooling: {self.sentence_pooling!r}; allowed: concat, mean"
            )
        if not 1 <= self.top_k <= self.n_experts:
            raise ModelConfigError(
                f"GRecConfig.top_k must be in [1, n_experts={self.n_experts}], got {self.top_k}"
            )
        if self.d_model % self.n_heads:
            raise ModelConfigError(
                f"GRecConfig.d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )

    @classmethod
    def tiny(cls) -> GRecConfig:
        return cls(d_model=8, n_heads=2, n_experts=4, top_k=2, expert_hidden=8, tower_hidden=(8,))


def expert_capacity(config: GRecConfig, seq_len: int) -> int:
    """Slots per expert per sequence. Token routing: ``expert_capacity`` if set, else
    ``ceil(factor * k * L / E)``, in [1, L]. Sequence-level routing: ``L`` (the whole sequence)."""
    if config.routing != "token":
        return seq_len
    if config.expert_capacity is not None:
        return max(1, min(config.expert_capacity, seq_len))
    return max(1, min(seq_len, math.ceil(config.capacity_factor * config.top_k * seq_len / config.n_experts)))


@dataclass(frozen=True)
class RoutingFlops:
    """Per-row FLOPs of the MoE layer (multiply-add = 2), summed over the T task passes of a row.

    ``router`` is our reading of the paper's "FLOPs (Routing)" column (Table 1 does not define it): the gating
    network, which makes token and concatenated-sentence routing cost the same, as in Table 1. ``experts`` counts the capacity
    slots the static-shape layer computes; ``experts_used`` only the assignments that fit in capacity, i.e.
    what a gather-based sparse kernel would compute at most.
    """

    mode: RoutingMode
    router: int
    experts: int
    experts_used: int

    @property
    def total(self) -> int:
        return self.router + self.experts


def routing_flops(config: GRecConfig, seq_len: int, n_task_tokens: int, n_tasks: int) -> RoutingFlops:
    """Routing cost per row for ``config.routing`` (see RoutingFlops); independent of the data."""
    d, e, k = config.d_model, config.n_experts, config.top_k
    gate = 2 * d * e
    if config.routing == "token":
        router = seq_len * gate
    elif config.routing == "sentence":
        router = seq_len * gate if config.sentence_pooling == "concat" else seq_len * d + gate
    elif config.routing == "task":
        router = gate
    else:
        router = n_task_tokens * d + gate
    capacity = expert_capacity(config, seq_len)
    per_token = 4 * d * config.expert_hidden
    used = min(seq_len * k, e * capacity) if config.routing == "token" else k * min(seq_len, capacity)
    return RoutingFlops(
        mode=config.routing,
        router=n_tasks * router,
        experts=n_tasks * e * capacity * per_token,
        experts_used=n_tasks * used * per_token,
    )


class MultiQueryAttention(nn.Module):
    """Eq. 2 with one K and one V head shared by all query heads (section 3.2)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * self.d_head, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        n, length, d = x.shape
        q = self.q(x).reshape(n, length, self.n_heads, self.d_head).transpose(1, 2)  # [N, h, L, dh]
        k, v = self.kv(x).unsqueeze(1).split(self.d_head, dim=-1)  # [N, 1, L, dh] each, shared by heads
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        heads = torch.softmax(scores, dim=-1) @ v
        return self.out(heads.transpose(1, 2).reshape(n, length, d))


class ParallelTransformerBlock(nn.Module):
    """Eq. 4: ``y = x + MLP(LN(x)) + Attention(LN(x))``, one LayerNorm feeding both branches; SwiGLU MLP."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.attention = MultiQueryAttention(d_model, n_heads)
        self.ff_in = nn.Linear(d_model, 2 * ff_mult * d_model, bias=False)
        self.ff_out = nn.Linear(ff_mult * d_model, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        value, gate = self.ff_in(h).chunk(2, dim=-1)
        ff = self.ff_out(value * F.silu(gate))
        return x + self.dropout(ff) + self.dropout(self.attention(h))


class RMSNorm(nn.Module):
    """Scale-only norm in front of the MoE layer (Switch Transformer style, as in the reference layer)."""

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def top_k_first(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest of ``probs`` (``>= 0``) along the last axis, largest first, an equal value going to
    the lower index as in ONNX Runtime's TopK: ``torch.topk`` orders ties arbitrarily on CPU, so a tie would
    pick other experts in the model than in its exported graph. Returns values and indices, ``[..., k]``."""
    remaining, picked = probs, []
    for _ in range(k):
        # The first of equal maxima, in torch and in ONNX. The reshape changes nothing but an ONNX Runtime
        # result without rows: its ArgMax then keeps the input's shape, which broke the MoE layer for no rows.
        index = remaining.argmax(dim=-1, keepdim=True).reshape(*probs.shape[:-1], 1)
        picked.append(index)
        remaining = remaining.scatter(-1, index, -1.0)
    ids = torch.cat(picked, dim=-1)
    return probs.gather(-1, ids), ids


class SparseMoE(nn.Module):
    """Top-k sparse MoE over ``[N, L, d]`` with a per-sequence expert capacity, fixed-shape dispatch.

    ``forward(x, h, router_logits)`` takes logits ``[N, L, E]`` (one row per token; sequence-level modes pass the
    same row for every token) and returns ``x + sum_k w_k * expert_k(RMSNorm(x))`` plus the routing record.
    """

    def __init__(self, config: GRecConfig, seq_len: int) -> None:
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.top_k
        self.capacity = expert_capacity(config, seq_len)
        self.norm = RMSNorm(config.d_model)
        self.experts = nn.ModuleList(
            nn.Sequential(
                Expert(config.d_model, [config.expert_hidden], "leaky_relu", config.dropout),
                nn.Linear(config.expert_hidden, config.d_model),
            )
            for _ in range(config.n_experts)
        )

    def route(self, router_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k and capacity: expert ids ``[N, L, k]``, combine weights (0 where dropped), buffer slots.

        A kept assignment gets slot ``expert * C + position``; a dropped one the spare slot ``E * C``.
        """
        n, length, e = router_logits.shape
        probs = torch.softmax(router_logits, dim=-1)
        weights, ids = top_k_first(probs, self.top_k)  # [N, L, k]
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        # GShard priority: choice-major, then token order; position = running count per expert.
        onehot = (ids.transpose(1, 2).unsqueeze(-1) == torch.arange(e, device=ids.device)).to(probs.dtype)
        onehot = onehot.reshape(n, self.top_k * length, e)  # [N, k*L, E]
        position = ((torch.cumsum(onehot, dim=1) - 1.0) * onehot).sum(-1)  # [N, k*L]
        position = position.reshape(n, self.top_k, length).transpose(1, 2)  # [N, L, k]
        kept = position < self.capacity
        slots = torch.where(
            kept, ids * self.capacity + position.long(), torch.full_like(ids, e * self.capacity)
        )
        return ids, weights * kept.to(weights.dtype), slots

    def forward(self, x: Tensor, h: Tensor, router_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` is the residual stream, ``h = self.norm(x)`` (computed once by the caller, the router reads it)."""
        n, length, d = x.shape
        ids, weights, slots = self.route(router_logits)
        index = slots.reshape(n, length * self.top_k, 1).expand(-1, -1, d)
        tokens = h.unsqueeze(2).expand(-1, -1, self.top_k, -1).reshape(n, length * self.top_k, d)
        n_slots = self.n_experts * self.capacity
        buffer = torch.zeros(n, n_slots + 1, d, dtype=h.dtype, device=h.device).scatter_add(1, index, tokens)
        buffer = buffer[:, :n_slots].reshape(n, self.n_experts, self.capacity, d)
        outputs = torch.stack([expert(buffer[:, i]) for i, expert in enumerate(self.experts)], dim=1)
        outputs = torch.cat([outputs.reshape(n, n_slots, d), outputs.new_zeros(n, 1, d)], dim=1)
        gathered = outputs.gather(1, index).reshape(n, length, self.top_k, d)
        return x + (weights.unsqueeze(-1) * gathered).sum(2), ids, weights


class GRec(MultiTaskModel):
    """Generalist Recommender (see the module docstring for the token layout and routing modes)."""

    def __init__(
        self,
        features: FeatureSpec | Mapping[str, Any],
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        config: GRecConfig,
    ) -> None:
        super().__init__(features, tasks)
        spec = self.feature_spec
        self.config = config
        d = config.d_model
        unknown = sorted(set(config.aux_task_columns) - set(spec.sparse_names))
        if unknown:
            raise ModelConfigError(
                f"GRecConfig.aux_task_columns: {unknown} are not sparse columns {spec.sparse_names}"
            )
        self.aux_columns = [spec.sparse_names.index(c) for c in config.aux_task_columns]
        self.embedding = FeatureEmbedding(spec)
        # Categorical encoder: each group of columns (one column by default) -> one deep token.
        n_groups = spec.n_sparse if config.deep_tokens is None else min(config.deep_tokens, spec.n_sparse)
        bounds = [
            round(i * spec.n_sparse / max(n_groups, 1)) * spec.embedding_dim for i in range(n_groups + 1)
        ]
        self.deep_slices = list(zip(bounds[:-1], bounds[1:], strict=True))
        self.deep = nn.ModuleList(nn.Linear(end - start, d) for start, end in self.deep_slices)
        # Wide component: numeric features expanded to [x, x^2, sqrt|x|], normalised, feed-forward (Fig. 2).
        self.wide = (
            nn.Sequential(nn.BatchNorm1d(3 * spec.n_dense), nn.Linear(3 * spec.n_dense, d), nn.LeakyReLU(0.2))
            if spec.n_dense
            else None
        )
        self.task_embedding = nn.Embedding(self.n_tasks, d)
        self.aux_task_embeddings = nn.ModuleList(
            nn.Embedding(spec.sparse_vocab_sizes[i], d) for i in self.aux_columns
        )
        self.n_task_tokens = 1 + len(self.aux_columns)
        self.seq_len = self.n_task_tokens + (1 if spec.n_dense else 0) + n_groups
        self.blocks = nn.Sequential(
            *(
                ParallelTransformerBlock(d, config.n_heads, config.ff_mult, config.dropout)
                for _ in range(config.n_layers)
            )
        )
        router_in = (
            self.seq_len * d if config.routing == "sentence" and config.sentence_pooling == "concat" else d
        )
        self.router = nn.Linear(router_in, config.n_experts)
        self.moe = SparseMoE(config, self.seq_len)
        self.head = Tower(self.seq_len * d, config.tower_hidden, "leaky_relu", config.dropout)
        self._aux_loss: Tensor | None = None
        self.last_routing: tuple[Tensor, Tensor] | None = None

    def task_sentences(self, sparse: Tensor) -> Tensor:
        """Raw task-sentence token embeddings ``[B, T, 1 + A, d]`` (main task, then auxiliary task tokens)."""
        b = sparse.shape[0]
        main = self.task_embedding.weight.unsqueeze(0).expand(b, -1, -1).unsqueeze(2)  # [B, T, 1, d]
        if not self.aux_columns:
            return main
        aux = []
        tables = typed_modules(self.aux_task_embeddings, nn.Embedding)
        for column, table in zip(self.aux_columns, tables, strict=True):
            idx = sparse[:, column]
            aux.append(
                table(torch.where((idx >= 0) & (idx < table.num_embeddings), idx, torch.zeros_like(idx)))
            )
        aux_tokens = torch.stack(aux, dim=1).unsqueeze(1).expand(-1, self.n_tasks, -1, -1)  # [B, T, A, d]
        return torch.cat([main, aux_tokens], dim=2)

    def feature_tokens(self, batch: Batch) -> Tensor:
        """Wide & deep layer: ``[B, (1 if dense) + G, d]`` (wide token, then one deep token per column group)."""
        sparse, dense = batch["sparse"], batch["dense"]
        flat = self.embedding(sparse, dense)
        groups = [
            linear(flat[:, start:end])
            for linear, (start, end) in zip(self.deep, self.deep_slices, strict=True)
        ]
        deep = torch.stack(groups, dim=1) if groups else flat.new_zeros(flat.shape[0], 0, self.config.d_model)
        if self.wide is None:
            return deep
        x = dense.to(flat.dtype)
        wide = self.wide(torch.cat([x, x * x, x.abs().sqrt()], dim=-1))
        return torch.cat([wide.unsqueeze(1), deep], dim=1)

    def router_logits(self, hidden: Tensor, task_tokens: Tensor) -> Tensor:
        """``[N, L, E]`` logits for the configured mode; sequence-level modes broadcast one row to all tokens."""
        config = self.config
        if config.routing == "token":
            source = hidden
        elif config.routing == "sentence":
            source = hidden.flatten(1) if config.sentence_pooling == "concat" else hidden.mean(1)
        elif config.routing == "task":
            source = task_tokens[:, 0]
        else:
            source = task_tokens.mean(1)
        if self.training and config.router_jitter > 0:
            source = source * torch.empty_like(source).uniform_(
                1 - config.router_jitter, 1 + config.router_jitter
            )
        logits = self.router(source)
        if config.routing == "token":
            return logits
        return logits.unsqueeze(1).expand(-1, self.seq_len, -1)

    def shared_representation(self, batch: Batch) -> Tensor:
        b, t, d = batch["sparse"].shape[0], self.n_tasks, self.config.d_model
        task_tokens = self.task_sentences(batch["sparse"])  # [B, T, A+1, d]
        features = self.feature_tokens(batch).unsqueeze(1).expand(-1, t, -1, -1)
        sequence = torch.cat([task_tokens, features], dim=2).reshape(b * t, self.seq_len, d)
        hidden = self.blocks(sequence)
        normed = self.moe.norm(hidden)
        logits = self.router_logits(normed, task_tokens.reshape(b * t, self.n_task_tokens, d))
        out, ids, weights = self.moe(hidden, normed, logits)
        if self.training:
            self._aux_loss = self._router_losses(logits, ids)
        self.last_routing = (
            ids.reshape(b, t, self.seq_len, -1),
            weights.detach().reshape(b, t, self.seq_len, -1),
        )
        return out.reshape(b, t, self.seq_len * d)

    def task_towers(self, tower_inputs: Tensor) -> Tensor:
        """The one head on every task's sequence: ``[B, T, L * d] -> [B, T]``."""
        b, t, width = tower_inputs.shape
        return self.head(tower_inputs.reshape(b * t, width)).reshape(b, t)

    def _router_losses(self, logits: Tensor, ids: Tensor) -> Tensor:
        """Switch load balance ``E * sum_e f_e P_e`` plus z-loss ``mean(logsumexp^2)`` over the routing units
        (tokens in token mode, sequences otherwise)."""
        if self.config.routing != "token":
            logits, ids = logits[:, :1], ids[:, :1]
        e = self.config.n_experts
        logits, ids = logits.reshape(-1, e), ids.reshape(ids.shape[0] * ids.shape[1], -1)
        probs = torch.softmax(logits, dim=-1)
        fraction = (ids.unsqueeze(-1) == torch.arange(e, device=ids.device)).to(probs.dtype).sum(1).mean(0)
        balance = e * (fraction / self.config.top_k * probs.mean(0)).sum()
        z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return self.config.balance_coef * balance + self.config.z_loss_coef * z_loss

    def auxiliary_loss(self) -> Tensor:
        """Router balance + z-loss of the last training forward pass (0 before one or in eval mode)."""
        base = super().auxiliary_loss()
        return base if self._aux_loss is None or not self.training else base + self._aux_loss

    def routing_flops(self) -> RoutingFlops:
        """Per-row MoE routing FLOPs of this model's mode (all T task passes)."""
        return routing_flops(self.config, self.seq_len, self.n_task_tokens, self.n_tasks)


@register_model("grec")
def grec(
    features: FeatureSpec | Mapping[str, Any],
    tasks: Sequence[TaskSpec | Mapping[str, Any]],
    preset: str = "default",
    **overrides: Any,
) -> GRec:
    """GRec with task-sentence routing by default; ``routing=`` picks token / sentence / task routing."""
    return GRec(features, tasks, build_config(GRecConfig, preset, overrides))
