"""MSSM as the DML paper configures it (section 3.1.4): "for MSSM and PLE, task-specific and shared
sub-networks are designated", i.e. each task slot mixes its own expert(s) and the shared one(s), never another
task's specific expert (the reference code's ``mssm(..., task_specific=True)``)."""

import pytest
import torch

import models
from models.base import random_batch
from models.layers import Expert, FeatureSpec

SPEC = FeatureSpec(sparse_vocab_sizes=(11, 13), n_dense=3, embedding_dim=4)
TWO_TASKS = [{"name": "like", "type": "binary"}, {"name": "rating", "type": "regression"}]


def _experts_reached_by_slot(model: torch.nn.Module, slot: int) -> int:
    """How many experts receive gradient from task slot ``slot`` of the tower inputs."""
    model.zero_grad(set_to_none=True)
    model.shared_representation(random_batch(SPEC, 32))[:, slot].sum().backward()
    experts = [m for m in model.modules() if isinstance(m, Expert)]
    return sum(
        any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in e.parameters()) for e in experts
    )


@pytest.mark.parametrize("name", ["mssm", "mssm+dml"])
def test_each_task_slot_mixes_its_own_and_the_shared_experts_only(name: str) -> None:
    torch.manual_seed(0)
    model = models.create_model(name, features=SPEC, tasks=TWO_TASKS, preset="tiny").eval()
    experts = [m for m in model.modules() if isinstance(m, Expert)]
    assert len(experts) == 3  # the paper's three bottom sub-networks for two tasks: 1 + 1 specific, 1 shared
    for slot in range(2):
        assert _experts_reached_by_slot(model, slot) == 2


def test_all_shared_experts_remain_available_as_an_option() -> None:
    model = models.create_model(
        "mssm", features=SPEC, tasks=TWO_TASKS, preset="tiny", n_specific_experts=0, n_shared_experts=3
    ).eval()
    assert _experts_reached_by_slot(model, 0) == 3


def test_gates_are_deterministic_at_evaluation_and_sampled_in_training() -> None:
    torch.manual_seed(0)
    model = models.create_model("mssm", features=SPEC, tasks=TWO_TASKS, preset="tiny")
    batch = random_batch(SPEC, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.shared_representation(batch), model.shared_representation(batch))
    assert model.auxiliary_loss() > 0  # the L0 penalty is on
