"""DML's stop-gradients, proven with autograd: a task's loss must not reach other towers' inputs through
CTFM's keys/values, nor other towers' hidden states through GKD; DML_v0 (no CTFM stop-gradient) must."""

import pytest
import torch

import models
from models.base import random_batch
from models.dml import CTFM, GKD
from models.layers import FeatureSpec

SPEC = FeatureSpec(sparse_vocab_sizes=(11, 13), n_dense=3, embedding_dim=4)
TASKS = [{"name": "click", "type": "binary"}, {"name": "rating", "type": "regression"}, {"name": "like"}]


def _grad_of_task_loss(module_out: torch.Tensor, leaf: torch.Tensor, task: int) -> torch.Tensor:
    (grad,) = torch.autograd.grad(module_out[:, task].pow(2).sum(), leaf, retain_graph=True)
    return grad


@pytest.mark.parametrize("task", [0, 1, 2])
def test_ctfm_blocks_other_towers_inputs(task: int) -> None:
    torch.manual_seed(0)
    ctfm = CTFM(n_tasks=3, d=6, dropout=0.0, stop_gradient=True)
    x = torch.randn(5, 3, 6, requires_grad=True)
    grad = _grad_of_task_loss(ctfm(x), x, task)
    others = [j for j in range(3) if j != task]
    assert torch.count_nonzero(grad[:, others]) == 0
    assert torch.count_nonzero(grad[:, task]) > 0  # own query + residual still train the backbone


def test_ctfm_without_stop_gradient_leaks_into_other_towers() -> None:
    torch.manual_seed(0)
    ctfm = CTFM(n_tasks=3, d=6, dropout=0.0, stop_gradient=False)
    x = torch.randn(5, 3, 6, requires_grad=True)
    grad = _grad_of_task_loss(ctfm(x), x, 0)
    assert torch.count_nonzero(grad[:, 1]) > 0 and torch.count_nonzero(grad[:, 2]) > 0


def test_ctfm_key_value_weights_still_train() -> None:
    ctfm = CTFM(n_tasks=2, d=4, dropout=0.0)
    ctfm(torch.randn(8, 2, 4)).sum().backward()
    assert ctfm.key.weight.grad is not None and torch.count_nonzero(ctfm.key.weight.grad) > 0
    assert ctfm.value.weight.grad is not None and torch.count_nonzero(ctfm.value.weight.grad) > 0


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_gkd_hidden_state_gradients(stop_gradient: bool) -> None:
    torch.manual_seed(0)
    gkd = GKD(n_tasks=3, d_hidden=5, d_knowledge=4, dropout=0.0, stop_gradient=stop_gradient)
    hidden = [torch.randn(7, 5, requires_grad=True) for _ in range(3)]
    out = gkd(hidden)
    for task in range(3):
        grads = torch.autograd.grad(out[:, task].sum(), hidden, retain_graph=True, allow_unused=True)
        for j, g in enumerate(grads):
            leaked = g is not None and torch.count_nonzero(g) > 0
            if j == task:
                assert leaked  # the gate reads h^k itself, with gradient
            else:
                assert leaked != stop_gradient


def _tower_input_grads(name: str) -> torch.Tensor:
    """Gradient of task 0's output w.r.t. the backbone's stacked tower inputs, through the whole DML head."""
    torch.manual_seed(0)
    model = models.create_model(name, features=SPEC, tasks=TASKS, preset="tiny").eval()
    x = model.backbone.shared_representation(random_batch(SPEC, 16)).detach().requires_grad_(True)
    out = model.task_towers(model.ctfm(x))
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    return grad


@pytest.mark.parametrize("backbone", ["mmoe", "ple", "shared-bottom", "single-task", "mssm"])
def test_dml_model_task_loss_stays_in_its_own_tower(backbone: str) -> None:
    grad = _tower_input_grads(f"{backbone}+dml")
    assert torch.count_nonzero(grad[:, 1:]) == 0
    assert torch.count_nonzero(grad[:, 0]) > 0


def test_dml_v0_model_task_loss_reaches_other_towers() -> None:
    grad = _tower_input_grads("mmoe+dml_v0")
    assert torch.count_nonzero(grad[:, 1:]) > 0


def test_ablations_switch_modules() -> None:
    def build(name: str) -> models.dml.DML:
        return models.create_model(name, features=SPEC, tasks=TASKS, preset="tiny")

    assert build("ple+ctfm").gkd is None and build("ple+ctfm").ctfm is not None
    assert build("ple+gkd").ctfm is None and build("ple+gkd").gkd is not None
    v0 = build("ple+dml_v0")
    assert not v0.ctfm.stop_gradient and v0.gkd.stop_gradient
    full = build("ple+dml")
    assert full.ctfm.stop_gradient and full.gkd.stop_gradient


def test_dml_overrides_reach_both_configs() -> None:
    model = models.create_model("mmoe+dml", features=SPEC, tasks=TASKS, gkd_dim=7, n_experts=2)
    assert model.gkd.knowledge[0][0].out_features == 7
    assert len(model.backbone.experts) == 2
    with pytest.raises(ValueError, match="n_expert"):
        models.create_model("mmoe+dml", features=SPEC, tasks=TASKS, n_expert=2)


def test_gkd_regularisation_options() -> None:
    """The deliberate options of docs/models/dml.md: GK dropout apart from the rest, zero-initialised GKD output
    (DML starts as its backbone), and an L2 term on GKD's weights in the auxiliary loss."""
    torch.manual_seed(0)
    base = models.create_model("mmoe+gkd", features=SPEC, tasks=TASKS, preset="tiny")
    assert base.gkd.knowledge[0][2].p == base.config.dml_dropout  # the paper code's one dropout rate
    model = models.create_model(
        "mmoe+gkd", features=SPEC, tasks=TASKS, preset="tiny", gkd_dropout=0.0, gkd_zero_init=True, gkd_l2=0.5
    )
    assert model.gkd.knowledge[0][2].p == 0.0
    assert all(torch.count_nonzero(out.weight) == 0 for out in model.gkd.out)
    model.eval()
    batch = random_batch(SPEC, 16)
    with torch.no_grad():
        tower_only = torch.stack(
            [t(x) for t, x in zip(model.backbone.towers, model.shared_representation(batch).unbind(1), strict=True)],
            dim=1,
        )
        assert torch.equal(model(batch), tower_only)
    expected = sum(m.weight.pow(2).sum() for m in model.gkd.modules() if isinstance(m, torch.nn.Linear))
    assert torch.allclose(model.auxiliary_loss(), model.backbone.auxiliary_loss() + 0.5 * expected)
