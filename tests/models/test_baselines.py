"""The baseline backbones against their papers' definitions: MMoE (Ma et al., KDD 2018, section 4.3) and PLE
(Tang et al., RecSys 2020, sections 4.1-4.2), recomputed by hand from the models' own weights, and configs
that cannot build the model refused with the field's name."""

import pytest
import torch
from torch import Tensor, nn

import models
from models.base import ModelConfigError, random_batch
from models.baselines import PLE, MMoE
from models.layers import FeatureSpec, Gate

SPEC = FeatureSpec(sparse_vocab_sizes=(11, 13), n_dense=3, embedding_dim=4)
TWO_TASKS = [{"name": "like", "type": "binary"}, {"name": "rating", "type": "regression"}]
THREE_TASKS = [*TWO_TASKS, {"name": "share", "type": "binary"}]


def _mix(gate: nn.Module, gate_input: Tensor, experts: list[Tensor]) -> Tensor:
    """The paper's ``sum_e softmax(W x)_e * expert_e`` with the gate's weights, written out (no Gate.forward)."""
    assert isinstance(gate, Gate)
    logits = gate_input @ gate.proj.weight.T + gate.proj.bias
    weights = logits.exp() / logits.exp().sum(dim=1, keepdim=True)  # softmax over the expert axis
    assert torch.allclose(weights.sum(dim=1), torch.ones(len(gate_input)))
    return sum((weights[:, e : e + 1] * out for e, out in enumerate(experts)), torch.zeros_like(experts[0]))


def test_mmoe_each_gate_reads_the_shared_input_and_mixes_every_shared_expert() -> None:
    torch.manual_seed(0)
    model = models.create_model("mmoe", features=SPEC, tasks=THREE_TASKS, preset="tiny").eval()
    assert isinstance(model, MMoE)
    batch = random_batch(SPEC, 16)
    with torch.no_grad():
        x = model.embedding(batch["sparse"], batch["dense"])
        experts = [expert(x) for expert in model.experts]
        expected = torch.stack([_mix(gate, x, experts) for gate in model.gates], dim=1)
        assert torch.allclose(model.shared_representation(batch), expected, atol=1e-6)


def _ple_by_hand(model: PLE, x: Tensor) -> Tensor:
    """PLE's recursion: task k's experts and gate read task k's output of the level below, the shared experts
    and the shared gate read the shared output; the shared gate mixes every expert; the last level has none."""
    task_in, shared_in = [x] * model.n_tasks, x
    for level in model.levels:
        shared = [expert(shared_in) for expert in level.shared]
        own = [[expert(task_in[k]) for expert in group] for k, group in enumerate(level.specific)]
        outputs = [_mix(level.task_gates[k], task_in[k], own[k] + shared) for k in range(model.n_tasks)]
        if level.shared_gate is not None:
            shared_in = _mix(level.shared_gate, shared_in, [o for group in own for o in group] + shared)
        task_in = outputs
    return torch.stack(task_in, dim=1)


@pytest.mark.parametrize("n_levels", [1, 2, 3])
def test_ple_matches_progressive_extraction_computed_by_hand(n_levels: int) -> None:
    torch.manual_seed(0)
    model = models.create_model(
        "ple", features=SPEC, tasks=THREE_TASKS, preset="tiny", n_levels=n_levels, n_specific_experts=2
    ).eval()
    assert isinstance(model, PLE)
    shared_gates = [level.shared_gate for level in model.levels]
    assert shared_gates[-1] is None and all(g is not None for g in shared_gates[:-1])
    batch = random_batch(SPEC, 16)
    with torch.no_grad():
        x = model.embedding(batch["sparse"], batch["dense"])
        assert torch.allclose(model.shared_representation(batch), _ple_by_hand(model, x), atol=1e-6)


@pytest.mark.parametrize("name", ["single-task", "shared-bottom", "mmoe", "ple", "mssm"])
def test_every_task_has_its_own_tower(name: str) -> None:
    model = models.create_model(name, features=SPEC, tasks=THREE_TASKS, preset="tiny")
    ids = [id(p) for tower in model.towers for p in tower.parameters()]
    assert len(model.towers) == 3 and len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("name", "field"),
    [("mmoe", "n_experts"), ("ple", "n_shared_experts"), ("ple", "n_levels")],
)
def test_a_config_without_experts_or_levels_is_refused_naming_the_field(name: str, field: str) -> None:
    with pytest.raises(ModelConfigError, match=rf"\.{field}: must be >= 1, got 0"):
        models.create_model(name, features=SPEC, tasks=TWO_TASKS, preset="tiny", **{field: 0})
