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
    make_optimizer,
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


def train(
    model: MaskedSharingModel, steps: int, steps_per_epoch: int = 4, start: int = 0, optimizer=None
) -> list[dict[str, float]]:
    """``steps`` optimizer steps from global step ``start``; the hooks' epoch end every ``steps_per_epoch``."""
    optimizer = optimizer or make_optimizer(model, lr=1e-2)
    logs = []
    for step in range(start, start + steps):
        batch, labels = data(seed=step)
        loss = training_loss(model, batch, labels, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logs.append(after_step(model, step))
        if (step + 1) % steps_per_epoch == 0:
            logs[-1] = {**logs[-1], **after_epoch(model, step // steps_per_epoch)}
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
    model = builder(SPEC, TASKS, preset="tiny", round_epochs=1, alpha=0.1, epsilon=0.4, init_density=0.9)
    n_weights = sum(linear.weight.numel() for linear in model.linears)
    alive = [int(sum(m.sum() for m in model.masks(t))) for t in range(2)]
    rounds = [expected_prune_rounds(n_weights, a, 0.1, 0.4) for a in alive]
    assert not selection_ready(model)
    train(model, 4 * (max(rounds) + 1))
    assert model.prune_rounds.tolist() == rounds
    assert selection_ready(model)
    for t in range(2):
        level = sparsity(model.masks(t))
        assert level > 0.4  # the last prune crossed epsilon ...
        assert 1 - (1 - level) / 0.9 <= 0.4 + 0.01  # ... and the one before had not (one round of alpha less)


@pytest.mark.parametrize("builder", [csrec, sparse_sharing])
def test_non_final_prune_rewinds_every_parameter_and_resets_the_optimizer(builder) -> None:
    """[36]'s pruning (which CSRec follows) restores the whole initial state and restarts the optimizer."""
    torch.manual_seed(2)
    model = builder(SPEC, TASKS, preset="tiny", round_epochs=2)
    theta0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = make_optimizer(model, lr=1e-2)
    train(model, 4, optimizer=optimizer)  # one epoch: weights move, no prune yet
    assert model.prune_rounds.tolist() == [0, 0]
    assert all(not torch.equal(p, theta0[n]) for n, p in model.named_parameters() if "bias" not in n)
    train(model, 4, start=4, optimizer=optimizer)  # end of epoch 1: prune, sparsity still <= epsilon
    assert model.prune_rounds.tolist() == [1, 1] and not selection_ready(model)
    for name, p in model.named_parameters():
        assert torch.equal(p, theta0[name]), name
    assert optimizer_state_size(optimizer) == 0


def optimizer_state_size(optimizer) -> int:
    optimizers = getattr(optimizer, "optimizers", [optimizer])
    return sum(len(o.state) for o in optimizers)


def test_csrec_alternates_tasks() -> None:
    torch.manual_seed(3)
    model = csrec(SPEC, TASKS, preset="tiny")
    batch, labels = data()
    model.objective(batch, labels, step=1).backward()  # step 1 trains task 1 only
    assert model.towers[0].out.weight.grad is None
    assert model.towers[1].out.weight.grad.abs().sum() > 0


def test_no_mask_changes_within_the_first_epochs_by_default() -> None:
    """Algorithm 1 prunes a trained subnet ([36]: one training run per round), not near-initial weights."""
    torch.manual_seed(12)
    model = csrec(SPEC, TASKS, hidden_dims=(16, 8))
    before = [m.clone() for m in all_masks(model)]
    train(model, 100, steps_per_epoch=1000)
    assert all(torch.equal(a, b) for a, b in zip(before, all_masks(model), strict=True))
    assert model.config.round_epochs >= 2


@pytest.mark.parametrize("builder", [csrec, sparse_sharing])
def test_every_task_prunes_the_smallest_trained_weights_of_its_subnet(builder) -> None:
    """All tasks prune on the same trained weights, then one rewind (no task prunes a just-rewound network)."""
    torch.manual_seed(13)
    model = builder(SPEC, TASKS, preset="tiny", round_epochs=1, init_density=0.8)
    train(model, 4, steps_per_epoch=1000)
    trained = [linear.weight.detach().clone() for linear in model.linears]
    expected = []
    for t in range(2):
        masks = [m.clone() for m in model.masks(t)]
        magnitude_prune(trained, masks, model.config.alpha)
        expected.append(masks)
    after_epoch(model, 0)  # the round ends: every task prunes, then one rewind
    assert model.prune_rounds.tolist() == [1, 1]
    for t in range(2):
        assert all(torch.equal(a, b) for a, b in zip(model.masks(t), expected[t], strict=True))


def test_a_csrec_step_moves_only_its_tasks_parameters() -> None:
    """Alg. 1 line 10 with Adam: task t's step leaves the other towers and weights outside M_t untouched,
    although Adam holds momentum for them from the other task's steps."""
    torch.manual_seed(14)
    model = csrec(SPEC, TASKS, preset="tiny", init_density=0.6)
    optimizer = make_optimizer(model, lr=1e-2)
    train(model, 6, steps_per_epoch=1000, optimizer=optimizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train(model, 1, start=6, steps_per_epoch=1000, optimizer=optimizer)  # step 6 trains task 0
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if n.startswith("towers.1"))
    assert not torch.equal(after["towers.0.out.weight"], before["towers.0.out.weight"])
    for i, mask in enumerate(model.masks(0)):
        name = f"base.net.{2 * i}.weight"
        assert torch.equal(after[name][mask == 0], before[name][mask == 0])
        assert not torch.equal(after[name][mask == 1], before[name][mask == 1])


def test_contrastive_loss_eq_5_6_scalar_values() -> None:
    # sigmoid(ln 0.5) = 0.5 / 1.5, sigmoid(ln 2) = 2 / 3
    assert log_loss_ratio(torch.tensor(0.5)).item() == pytest.approx(1 / 3)
    assert contrastive_loss(torch.tensor(0.5), torch.tensor(2.0)).item() == pytest.approx(1 / 3 - 2 / 3)


def test_a_saturated_tower_with_zero_loss_gives_finite_gradients() -> None:
    """Eq. 5 at loss 0 (logits of 500 on positive labels: the log-loss underflows to exactly 0) has the
    gradient 1 of loss / (1 + loss); through ln it was 0 * inf = NaN in every parameter."""
    torch.manual_seed(0)
    model = csrec(SPEC, TASKS, preset="tiny")
    with torch.no_grad():
        model.towers[0].out.bias.fill_(500.0)
    batch, _ = data(8)
    loss = model.objective(batch, torch.ones(8, 2), step=0)
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    zero = torch.zeros((), requires_grad=True)
    log_loss_ratio(zero).backward()
    assert zero.grad is not None and zero.grad.item() == 1.0


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
    # a difference of two float32 terms near 0.4 (rounding ~1e-7 each): an absolute tolerance
    assert got.item() == pytest.approx(want.item(), abs=1e-6)


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


def test_a_weight_two_of_three_tasks_keep_is_shared() -> None:
    """Section 3.3.2/3.3.5 with T = 3: "shared" is kept by at least two tasks, not by every task."""
    torch.manual_seed(7)
    three = [*TASKS, {"name": "third"}]
    model = csrec(
        SPEC, three, preset="tiny", init_density=1.0, contrastive="shared_random_reverse", reverse_ratio=1.0
    )
    with torch.no_grad():
        model.mask_0[2, 0] = 0.0  # row 0 of layer 0: kept by tasks 0 and 1 only
        model.mask_1[1:, 0] = 0.0  # row 0 of layer 1: kept by task 0 only
    total = sum(linear.weight.numel() for linear in model.linears)
    assert model.sharing_ratio() == pytest.approx(1 - model.mask_1[0, 0].numel() / total)
    flipped = model.contrastive_mask(0)  # ratio 1: every weight task 0 shares is dropped
    assert flipped[0].sum() == 0 and flipped[1][0].tolist() == model.mask_1[0, 0].tolist()
    flipped = model.contrastive_mask(2)  # task 2 pruned row 0 of layer 0: no weight of it switched on
    assert flipped[0].sum() == 0 and flipped[1].sum() == 0
    stats = model.mask_statistics()
    a, b, c = (stats[f"density/{t['name']}"] for t in three)
    independent = a * b * (1 - c) + a * (1 - b) * c + (1 - a) * b * c + a * b * c
    assert stats["sharing_ratio_if_independent"] == pytest.approx(independent)


def test_ratios_losses_and_mask_statistics_are_logged_through_the_hooks() -> None:
    torch.manual_seed(6)
    model = csrec(SPEC, TASKS, preset="tiny", log_every=1, round_epochs=2)
    logs = train(model, 3, steps_per_epoch=1000)
    assert {"sharing_ratio", "conflict_ratio"} <= set(logs[-1]) and 0 <= logs[-1]["conflict_ratio"] <= 1
    epoch = after_epoch(model, 0)
    for key in ("loss", "contrastive_subnet_loss", "contrastive_loss", "density", "pruned_since_init"):
        assert {f"{key}/income", f"{key}/married"} <= set(epoch), key
    assert epoch["pruned_since_init/income"] == 0.0 and epoch["masks_fixed"] == 0.0
    assert 0 <= epoch["conflict_ratio"] <= 1 and epoch["abs_weight/live"] > 0
    assert epoch["sharing_ratio_if_independent"] == pytest.approx(
        epoch["density/income"] * epoch["density/married"]
    )
    after = after_epoch(model, 1)  # end of the first round: pruning moved the masks off their initial draw
    assert after["pruned_since_init/income"] > 0 and "loss/income" not in after  # sums restart each epoch


@pytest.mark.parametrize("builder", [csrec, sparse_sharing])
def test_folding_preserves_outputs_exactly(builder) -> None:
    torch.manual_seed(7)
    model = builder(SPEC, TASKS, preset="tiny", round_epochs=1)
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
    model = csrec(SPEC, TASKS, preset="tiny", round_epochs=1)
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
