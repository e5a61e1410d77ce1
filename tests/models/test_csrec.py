"""CSRec and sparse sharing: binary masks, Algorithm 1 pruning, Eq. 3-6 by hand, folding for export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from models.base import ModelConfigError, random_batch, task_losses
from models.csrec import CSRec, contrastive_loss, contrastive_masks, csrec, log_loss_ratio
from models.export import export_onnx
from models.grec import grec
from models.layers import FeatureSpec
from models.schedules import (
    after_epoch,
    after_step,
    default_training_loss,
    expected_prune_rounds,
    magnitude_prune,
    selection_ready,
    sparsity,
    training_loss,
)
from models.sparse_sharing import MaskedSharingModel, sparse_sharing

SPEC = FeatureSpec(sparse_vocab_sizes=(5, 7), n_dense=3, embedding_dim=4)
TASKS = [{"name": "income"}, {"name": "married"}]


def data(n: int = 64, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    batch = random_batch(SPEC, n, torch.Generator().manual_seed(seed))
    labels = torch.stack([batch["dense"][:, 0] > 0, batch["dense"][:, 1] > 0.5], dim=1).float()
    return batch, labels


def train(model: MaskedSharingModel, steps: int) -> list[dict[str, float]]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    logs = []
    for step in range(steps):
        batch, labels = data(seed=step)
        loss = training_loss(model, batch, labels, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logs.append(after_step(model, step))
    return logs


def all_masks(model: MaskedSharingModel) -> list[torch.Tensor]:
    return [m for t in range(model.n_tasks) for m in model.masks(t)]


@pytest.mark.parametrize("builder", [csrec, sparse_sharing])
def test_masks_stay_binary_and_forward_is_b_by_t(builder) -> None:
    torch.manual_seed(0)
    model = builder(SPEC, TASKS, preset="tiny")
    train(model, 12)
    for mask in all_masks(model):
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert model(data()[0]).shape == (64, 2)


def test_magnitude_prune_removes_the_smallest_live_weights_across_layers() -> None:
    weights = [torch.tensor([[0.5, -0.1], [2.0, 0.3]]), torch.tensor([[-0.05, 1.0, 0.2]])]
    masks = [torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])]
    # live: 0.5, -0.1, 2.0, -0.05, 1.0, 0.2 (0.3 is already pruned); alpha 0.5 -> 3 smallest go
    assert magnitude_prune(weights, masks, 0.5) == 3
    assert masks[0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert masks[1].tolist() == [[0.0, 1.0, 0.0]]


@pytest.mark.parametrize("builder", [csrec, sparse_sharing])
def test_pruning_follows_algorithm_1_to_the_minimal_sparsity(builder) -> None:
    torch.manual_seed(1)
    model = builder(SPEC, TASKS, preset="tiny", prune_every=1, alpha=0.1, epsilon=0.4, init_density=0.9)
    n_weights = sum(linear.weight.numel() for linear in model.linears)
    alive = [int(sum(m.sum() for m in model.masks(t))) for t in range(2)]
    rounds = [expected_prune_rounds(n_weights, a, 0.1, 0.4) for a in alive]
    assert not selection_ready(model)
    train(model, 2 * max(rounds) + 2)
    assert model.prune_rounds.tolist() == rounds
    assert selection_ready(model)
    for t in range(2):
        level = sparsity(model.masks(t))
        assert level > 0.4  # the last prune crossed epsilon ...
        assert 1 - (1 - level) / 0.9 <= 0.4 + 0.01  # ... and the one before had not (one round of alpha less)


def test_non_final_prune_rewinds_the_shared_weights_to_theta0() -> None:
    torch.manual_seed(2)
    model = sparse_sharing(SPEC, TASKS, preset="tiny", prune_every=3)
    train(model, 2)  # weights moved away from theta0, no prune yet
    assert not torch.equal(model.linears[0].weight, model.theta0_weight_0)
    train_step = 2
    batch, labels = data()
    training_loss(model, batch, labels, train_step).backward()
    after_step(model, train_step)  # (2 + 1) % 3 == 0: prune, sparsity still <= epsilon -> rewind
    assert model.prune_rounds.tolist() == [1, 1]
    assert torch.equal(model.linears[0].weight, model.theta0_weight_0)
    assert torch.equal(model.linears[1].bias, model.theta0_bias_1)


def test_csrec_alternates_tasks_and_prunes_each_after_its_own_steps() -> None:
    torch.manual_seed(3)
    model = csrec(SPEC, TASKS, preset="tiny", prune_every=2)
    batch, labels = data()
    model.objective(batch, labels, step=1).backward()  # step 1 trains task 1 only
    assert model.towers[0].out.weight.grad is None
    assert model.towers[1].out.weight.grad.abs().sum() > 0
    assert model.tasks_to_prune(0) == [] and model.tasks_to_prune(2) == [0] and model.tasks_to_prune(3) == [1]
    assert sparse_sharing(SPEC, TASKS, preset="tiny", prune_every=2).tasks_to_prune(1) == [0, 1]


def test_contrastive_loss_eq_5_6_scalar_values() -> None:
    # sigmoid(ln 0.5) = 0.5 / 1.5, sigmoid(ln 2) = 2 / 3
    assert log_loss_ratio(torch.tensor(0.5)).item() == pytest.approx(1 / 3)
    assert contrastive_loss(torch.tensor(0.5), torch.tensor(2.0)).item() == pytest.approx(1 / 3 - 2 / 3)


def test_csrec_objective_matches_a_hand_computation() -> None:
    torch.manual_seed(4)
    model = csrec(SPEC, TASKS, preset="tiny", reverse_ratio=0.3)
    batch, labels = data(8)
    step, task = 3, 1
    torch.manual_seed(99)
    got = model.objective(batch, labels, step)

    # by hand: same random draws (one torch.rand per layer), explicit matrix products, explicit log-loss
    torch.manual_seed(99)
    masks = model.masks(task)
    flipped = [torch.where((torch.rand(m.shape) < 0.3) & m.bool(), 1 - m, m) for m in masks]  # 1 -> 0 only
    x = torch.cat([model.embedding.tables[i](batch["sparse"][:, i]) for i in range(2)] + [batch["dense"]], 1)

    def logit(mask_list: list[torch.Tensor]) -> torch.Tensor:
        h = x
        for linear, mask in zip(model.linears, mask_list, strict=True):
            h = torch.relu(h @ (linear.weight * mask).T + linear.bias)
        return (h @ model.towers[task].out.weight.T + model.towers[task].out.bias).squeeze(1)

    y = labels[:, task]

    def log_loss(z: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(z)
        return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()

    pos, neg = log_loss(logit(masks)), log_loss(logit(flipped))
    want = pos / (1 + pos) - neg / (1 + neg)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_shared_random_reverse_flips_only_shared_weights() -> None:
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    shared = torch.tensor([True, False, False, True, False])
    out = contrastive_masks([mask], [shared], "shared_random_reverse", ratio=1.0)[0]
    assert out.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    out = contrastive_masks([mask], [shared], "random_reverse", ratio=1.0, reverse_pruned=True)[0]
    assert out.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]


def test_sharing_and_conflict_ratios() -> None:
    torch.manual_seed(5)
    model = sparse_sharing(SPEC, TASKS, preset="tiny", init_density=1.0)
    assert model.sharing_ratio() == 1.0
    # identical towers: same labels -> same gradients (no conflict); opposite labels -> opposite gradients
    model.towers[1].load_state_dict(model.towers[0].state_dict())
    batch, labels = data()
    same = torch.stack([labels[:, 0], labels[:, 0]], 1)
    opposite = torch.stack([labels[:, 0], 1 - labels[:, 0]], 1)
    assert model.conflict_ratio(batch, same) == 0.0
    assert model.conflict_ratio(batch, opposite) > 0.5
    with torch.no_grad():
        model.mask_0[1, 0] = 0.0
    n0 = model.mask_0[1, 0].numel()  # one row of layer 0 is no longer shared
    total = sum(linear.weight.numel() for linear in model.linears)
    assert model.sharing_ratio() == pytest.approx(1 - n0 / total)


def test_ratios_are_logged_through_the_hooks() -> None:
    torch.manual_seed(6)
    model = csrec(SPEC, TASKS, preset="tiny", log_every=1)
    logs = train(model, 3)
    assert {"sharing_ratio", "conflict_ratio", "density/income", "density/married"} <= set(logs[-1])
    assert 0 <= logs[-1]["conflict_ratio"] <= 1
    assert "sharing_ratio" in after_epoch(model, 0)


@pytest.mark.parametrize("builder", [csrec, sparse_sharing])
def test_folding_preserves_outputs_exactly(builder) -> None:
    torch.manual_seed(7)
    model = builder(SPEC, TASKS, preset="tiny", prune_every=1)
    train(model, 10)
    model.eval()
    folded = model.for_export()
    assert not any("mask" in name for name, _ in folded.named_buffers())
    batch = random_batch(SPEC, 500, torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(folded(batch), model(batch))


def test_models_without_hooks_use_the_plain_objective() -> None:
    torch.manual_seed(8)
    model = grec(SPEC, TASKS, preset="tiny")
    batch, labels = data()
    torch.manual_seed(0)
    got = training_loss(model, batch, labels, 0)
    torch.manual_seed(0)
    assert torch.equal(got, default_training_loss(model, batch, labels))
    assert after_step(model, 0) == {} and after_epoch(model, 0) == {} and selection_ready(model)


def test_sparse_sharing_objective_is_the_sum_of_task_losses() -> None:
    torch.manual_seed(9)
    model = sparse_sharing(SPEC, TASKS, preset="tiny", log_every=1000)
    batch, labels = data()
    out = model(batch)
    want = sum(F.binary_cross_entropy_with_logits(out[:, t], labels[:, t]) for t in range(2))
    assert model.training_loss(batch, labels, 1).item() == pytest.approx(want.item())
    assert torch.allclose(task_losses(out, labels, model.tasks).sum(), want)


def test_config_errors() -> None:
    with pytest.raises(ModelConfigError, match="contrastive"):
        csrec(SPEC, TASKS, contrastive="conflicted")
    with pytest.raises(ModelConfigError, match="alpha"):
        csrec(SPEC, TASKS, alpha=1.5)


@pytest.mark.slow
def test_folded_csrec_exports_to_a_plain_onnx_mlp(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(10)
    model = csrec(SPEC, TASKS, preset="tiny", prune_every=1)
    train(model, 10)
    assert isinstance(model, CSRec)
    folded = model.eval().for_export()

    batch = random_batch(SPEC, 1000, torch.Generator().manual_seed(11))
    path = tmp_path / "csrec.onnx"
    export_onnx(folded, path)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Mul" not in ops  # no mask multiplications left in the graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"sparse": batch["sparse"].numpy(), "dense": batch["dense"].numpy()})[0]
    with torch.no_grad():
        want = model(batch).numpy()
    assert np.abs(got - want).max() <= 1e-4


# --- issue 16 audit: each test below failed before its fix -------------------------------------------------


def test_random_reverse_only_drops_weights_of_the_subnet_by_default() -> None:
    """Fig. 1 / section 1: the contrastive parameter is a weight of the subnet set to 0 (1 -> 0)."""
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    out = contrastive_masks([mask], [torch.zeros(5, dtype=torch.bool)], "random_reverse", ratio=1.0)[0]
    assert out.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]
    torch.manual_seed(0)
    big = (torch.rand(200, 50) < 0.6).float()
    out = contrastive_masks([big], [torch.zeros_like(big, dtype=torch.bool)], "random_reverse", ratio=0.3)[0]
    assert (out <= big).all()  # never turns a pruned weight on
    assert 0.2 < 1 - out.sum() / big.sum() < 0.4  # drops about 30% of the live bits


@pytest.mark.parametrize("reverse_pruned", [False, True])
def test_contrastive_subnet_gradient_reaches_only_theta_masked_by_m_t(reverse_pruned: bool) -> None:
    """Alg. 1 line 10: the step updates only Θ ⊙ M_t; towers and embeddings learn from the real subnet only."""
    torch.manual_seed(11)
    model = csrec(
        SPEC, TASKS, preset="tiny", init_density=0.6, reverse_ratio=0.5, reverse_pruned=reverse_pruned
    )
    batch, labels = data()
    task = 1
    torch.manual_seed(3)
    model.objective(batch, labels, step=task).backward()
    for linear, mask in zip(model.linears, model.masks(task), strict=True):
        assert linear.weight.grad is not None
        assert (linear.weight.grad[mask == 0] == 0).all()
        assert linear.weight.grad[mask == 1].abs().sum() > 0
    got = {
        n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
        for n, p in model.named_parameters()
        if n.startswith(("towers", "embedding"))
    }
    model.zero_grad()
    x = model.embedding(batch["sparse"], batch["dense"])
    out = model.task_logit(x, task, model.masks(task)).unsqueeze(1)
    log_loss_ratio(task_losses(out, labels[:, task : task + 1], [model.tasks[task]]).sum()).backward()
    for name, grad in got.items():
        want = dict(model.named_parameters())[name].grad
        want = torch.zeros_like(grad) if want is None else want
        assert torch.allclose(grad, want, atol=1e-7), name
