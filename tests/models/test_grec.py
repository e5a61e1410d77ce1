"""GRec: routing shapes per mode, expert capacity, router losses, routing FLOPs, top-k kept in ONNX."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from models.base import ModelConfigError, random_batch
from models.export import export_onnx
from models.grec import (
    ROUTING_MODES,
    GRec,
    GRecConfig,
    SparseMoE,
    expert_capacity,
    grec,
    routing_flops,
    top_k_first,
)
from models.layers import FeatureSpec

SPEC = FeatureSpec(sparse_vocab_sizes=(5, 7, 9), n_dense=3, embedding_dim=4)
TASKS = [{"name": "income"}, {"name": "married"}]


def build(routing: str, **overrides: object) -> GRec:
    torch.manual_seed(0)
    return grec(SPEC, TASKS, preset="tiny", routing=routing, aux_task_columns=("sparse_1",), **overrides)


@pytest.mark.parametrize("routing", ROUTING_MODES)
def test_forward_shapes_and_routing_record(routing: str) -> None:
    model = build(routing)
    out = model(random_batch(SPEC, 16))
    ids, weights = model.last_routing
    length = 2 + 1 + 3  # main task + one auxiliary task token, wide token, three deep tokens
    assert model.seq_len == length
    assert out.shape == (16, 2)
    assert ids.shape == weights.shape == (16, 2, length, model.config.top_k)
    assert ((ids >= 0) & (ids < model.config.n_experts)).all()
    # each token's top-k experts are distinct
    assert (ids.sort(-1).values.diff(dim=-1) > 0).all()


@pytest.mark.parametrize("routing", ["sentence", "task", "task_sentence"])
def test_sequence_level_modes_send_every_token_to_the_same_experts(routing: str) -> None:
    model = build(routing, capacity_factor=100.0)
    model(random_batch(SPEC, 32))
    ids, _ = model.last_routing
    assert (ids == ids[:, :, :1]).all()


def test_task_routing_depends_on_the_task_only_and_task_sentence_on_the_flow_token() -> None:
    task_model, ts_model = build("task").eval(), build("task_sentence").eval()  # no router jitter
    batch = random_batch(SPEC, 64)
    task_model(batch)
    ids, _ = task_model.last_routing
    assert (ids == ids[:1]).all()  # identical for every row of a task
    ts_model(batch)
    ids, _ = ts_model.last_routing
    flow = batch["sparse"][:, 1]
    for value in flow.unique():
        rows = ids[flow == value]
        assert (rows == rows[:1]).all()  # same task sentence -> same experts


def test_token_routing_can_differ_between_tokens_of_one_sequence() -> None:
    model = build("token", capacity_factor=100.0)
    with torch.no_grad():
        model.router.weight.normal_(std=5.0)
    model(random_batch(SPEC, 32))
    ids, _ = model.last_routing
    assert not (ids == ids[:, :, :1]).all()


def test_capacity_drops_overflow_in_gshard_priority_order() -> None:
    config = GRecConfig(
        d_model=4, n_heads=1, n_experts=4, top_k=2, expert_capacity=2, expert_hidden=4, routing="token"
    )
    moe = SparseMoE(config, seq_len=5)
    # every token prefers expert 0, then expert 1: 5 first choices and 5 second choices, 2 slots each
    logits = torch.tensor([4.0, 2.0, 0.0, -1.0]).expand(1, 5, 4)
    ids, weights, slots = moe.route(logits)
    assert (ids[..., 0] == 0).all() and (ids[..., 1] == 1).all()
    kept = weights > 0
    assert kept[0, :, 0].tolist() == [True, True, False, False, False]
    assert kept[0, :, 1].tolist() == [True, True, False, False, False]
    assert sorted(slots[kept].tolist()) == [0, 1, 2, 3]  # expert 0 slots 0,1; expert 1 slots 2,3
    assert (slots[~kept] == 4 * 2).all()
    # kept weights are the top-2 probabilities renormalised
    probs = torch.softmax(torch.tensor([4.0, 2.0]), 0)
    assert torch.allclose(weights[0, 0], probs)


def test_dropped_tokens_pass_through_the_residual_unchanged() -> None:
    config = GRecConfig(
        d_model=4, n_heads=1, n_experts=2, top_k=1, expert_capacity=1, expert_hidden=4, routing="token"
    )
    moe = SparseMoE(config, seq_len=3)
    x = torch.randn(2, 3, 4)
    logits = torch.tensor([1.0, 0.0]).expand(2, 3, 2)  # all to expert 0, capacity 1
    out, _, weights = moe(x, moe.norm(x), logits)
    assert torch.equal(out[:, 1:], x[:, 1:])
    assert not torch.equal(out[:, 0], x[:, 0])
    assert (weights[:, 1:] == 0).all()


def test_capacity_factor_default_reproduces_the_papers_two_tokens() -> None:
    # 8 experts, top-4, 5 tokens per sequence (the paper's setting): capacity 2 tokens
    assert expert_capacity(GRecConfig(routing="token"), seq_len=5) == 2
    assert expert_capacity(GRecConfig(routing="token", expert_capacity=3), seq_len=5) == 3


@pytest.mark.parametrize("routing", ROUTING_MODES)
def test_router_losses_are_positive_and_reach_the_router(routing: str) -> None:
    model = build(routing)
    model.train()
    model(random_batch(SPEC, 16))
    aux = model.auxiliary_loss()
    assert aux.item() > 0
    aux.backward()
    assert model.router.weight.grad is not None and model.router.weight.grad.abs().sum() > 0
    model.eval()
    assert model.auxiliary_loss().item() == 0.0


def test_balance_loss_is_one_under_uniform_routing() -> None:
    model = build("token", balance_coef=1.0, z_loss_coef=0.0)
    logits = torch.zeros(3, model.seq_len, model.config.n_experts)
    ids = torch.arange(model.config.n_experts).repeat(3 * model.seq_len // 2 + 1)[: 3 * model.seq_len * 2]
    ids = ids.reshape(3, model.seq_len, 2)  # every expert chosen equally often
    assert model._router_losses(logits, ids).item() == pytest.approx(1.0)


def test_routing_flops_by_hand_and_ordering_of_table_1() -> None:
    base = dict(d_model=16, n_heads=2, n_experts=8, top_k=4, expert_capacity=2, expert_hidden=32)
    seq_len, n_task_tokens, n_tasks = 10, 2, 2
    flops = {
        m: routing_flops(GRecConfig(routing=m, **base), seq_len, n_task_tokens, n_tasks)
        for m in ROUTING_MODES
    }
    gate = 2 * 16 * 8
    assert flops["token"].router == n_tasks * seq_len * gate
    assert flops["sentence"].router == n_tasks * seq_len * gate  # concatenated sentence: as costly as tokens
    assert flops["task"].router == n_tasks * gate
    assert flops["task_sentence"].router == n_tasks * (n_task_tokens * 16 + gate)
    # paper Table 1: token = sentence > task-sentence > task
    assert (
        flops["token"].router
        == flops["sentence"].router
        > flops["task_sentence"].router
        > flops["task"].router
    )
    mean = routing_flops(GRecConfig(routing="sentence", sentence_pooling="mean", **base), seq_len, 2, 2)
    assert mean.router == n_tasks * (seq_len * 16 + gate)
    per_slot = 4 * 16 * 32
    assert flops["token"].experts == n_tasks * 8 * 2 * per_slot
    assert flops["token"].experts_used == n_tasks * min(seq_len * 4, 16) * per_slot
    assert flops["task"].experts == n_tasks * 8 * seq_len * per_slot  # the whole sequence, every expert slot
    assert flops["task"].experts_used == n_tasks * 4 * seq_len * per_slot  # the whole sequence, k experts


def test_model_reports_its_own_routing_flops() -> None:
    model = build("task_sentence")
    assert model.routing_flops() == routing_flops(model.config, model.seq_len, 2, 2)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ModelConfigError, match="routing"):
        build("expert")
    with pytest.raises(ModelConfigError, match="aux_task_columns"):
        grec(SPEC, TASKS, preset="tiny", aux_task_columns=("nope",))
    with pytest.raises(ModelConfigError, match="unknown keys"):
        grec(SPEC, TASKS, preset="tiny", n_expert=3)


def test_sentence_router_reads_the_whole_sequence() -> None:
    model = build("sentence")
    assert model.router.in_features == model.seq_len * model.config.d_model
    assert build("sentence", sentence_pooling="mean").router.in_features == model.config.d_model


@pytest.mark.slow
@pytest.mark.parametrize("routing", ["token", "task_sentence"])
def test_onnx_keeps_topk_routing_and_matches_pytorch(routing: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = build(routing).eval()

    batch = random_batch(SPEC, 1000, torch.Generator().manual_seed(3))
    path = tmp_path / "grec.onnx"
    export_onnx(model, path)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"ArgMax", "ScatterElements", "GatherElements"} <= ops  # top-k picked in the graph (top_k_first)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"sparse": batch["sparse"].numpy(), "dense": batch["dense"].numpy()})[0]
    with torch.no_grad():
        want = model(batch).numpy()
    assert np.abs(got - want).max() <= 1e-4
    assert math.isfinite(float(got.sum()))


def test_deep_tokens_group_the_categorical_columns() -> None:
    model = build("token", deep_tokens=2)
    assert model.seq_len == 2 + 1 + 2
    assert model.deep_slices == [(0, 8), (8, 12)]  # columns {0, 1} and {2}, 4-wide embeddings
    assert model(random_batch(SPEC, 4)).shape == (4, 2)
    dense_only = grec(FeatureSpec(n_dense=2), TASKS, preset="tiny")
    assert dense_only.seq_len == 2 and dense_only(random_batch(dense_only.feature_spec, 3)).shape == (3, 2)


# --- issue 16 audit: each test below failed before its fix -------------------------------------------------


@pytest.mark.parametrize("routing", ["sentence", "task", "task_sentence"])
def test_sequence_level_routing_sends_every_token_to_its_k_experts(routing: str) -> None:
    """A sequence-level choice is one expert set for the whole sequence; a per-sequence capacity below the
    sequence length dropped the later (feature) tokens from every expert, deterministically."""
    model = build(routing)  # default capacity factor
    model(random_batch(SPEC, 32))
    _, weights = model.last_routing
    assert (weights > 0).all()
    token = dataclasses.replace(model.config, routing="token")
    assert expert_capacity(token, model.seq_len) < model.seq_len  # token routing keeps its capacity


def test_router_defaults_follow_the_reference_moe_layer() -> None:
    """Reference GRec: multiplicative router jitter 0.1, z-loss and balance loss weighted 1e-4 each."""
    config = GRecConfig()
    assert config.router_jitter == 0.1
    assert config.balance_coef == 1e-4 and config.z_loss_coef == 1e-4
    model = build("token", capacity_factor=100.0)
    batch = random_batch(SPEC, 16)
    model.train()
    model(batch)
    first = model.last_routing[1].clone()
    model(batch)
    assert not torch.equal(first, model.last_routing[1])  # jitter in training
    model.eval()
    model(batch)
    first = model.last_routing[1].clone()
    model(batch)
    assert torch.equal(first, model.last_routing[1])  # none at inference


@pytest.mark.parametrize("routing", ROUTING_MODES)
def test_one_head_serves_every_task(routing: str) -> None:
    """The reference GRec has one head for all tasks: a task differs only by its task sentence."""
    model = build(routing).eval()
    with torch.no_grad():
        model.task_embedding.weight[1] = model.task_embedding.weight[0]
        out = model(random_batch(SPEC, 16))
    assert torch.allclose(out[:, 0], out[:, 1])


def test_top_k_breaks_ties_towards_the_lower_expert_as_onnx_runtime_does() -> None:
    probs = torch.tensor([[0.1, 0.3, 0.3, 0.0, 0.3], [0.25, 0.25, 0.25, 0.25, 0.0]], requires_grad=True)
    weights, ids = top_k_first(probs, 3)
    assert ids.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert torch.equal(weights, probs.gather(-1, ids))
    weights.sum().backward()  # the router learns through the picked probabilities
    assert probs.grad.tolist() == [[0, 1, 1, 0, 1], [1, 1, 1, 0, 0]]
    untied = torch.rand(4, 6, 8)
    assert torch.equal(top_k_first(untied, 4)[1], untied.topk(4).indices)


@pytest.mark.parametrize("routing", ROUTING_MODES)
def test_tied_router_probabilities_route_alike_in_onnx_and_pytorch(routing: str, tmp_path) -> None:
    """Equal router rows (or a router at zero) tie experts: torch.topk ordered the tie arbitrarily on CPU and
    ONNX Runtime's TopK took the lower index, so the served graph used other experts (|diff| up to 0.1)."""
    ort = pytest.importorskip("onnxruntime")
    model = build(routing).eval()
    with torch.no_grad():
        model.router.weight[1:] = model.router.weight[0]  # experts 0..3 tie on every routing unit
        model.router.bias.zero_()
    path = tmp_path / "grec.onnx"
    export_onnx(model, path)
    batch = random_batch(SPEC, 64, torch.Generator().manual_seed(3))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"sparse": batch["sparse"].numpy(), "dense": batch["dense"].numpy()})[0]
    with torch.no_grad():
        want = model(batch).numpy()
    assert np.abs(got - want).max() <= 1e-5
    ids, _ = model.last_routing
    assert (ids == torch.arange(model.config.top_k)).all()  # the lowest expert ids, in order
    none = {"sparse": batch["sparse"][:0].numpy(), "dense": batch["dense"][:0].numpy()}
    assert session.run(None, none)[0].shape == (0, 2)  # ONNX Runtime's ArgMax kept its input's shape here
