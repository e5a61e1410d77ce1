"""Shared blocks: shapes, out-of-vocabulary fallback, config resolution."""

from dataclasses import dataclass

import pytest
import torch

from models.base import ModelConfigError, build_config, random_batch, task_losses
from models.layers import MLP, FeatureEmbedding, FeatureSpec, Gate, TaskSpec, Tower, coerce_tasks


def test_feature_embedding_concatenates_tables_and_dense() -> None:
    spec = FeatureSpec(sparse_vocab_sizes=(5, 7), n_dense=3, embedding_dim=4)
    emb = FeatureEmbedding(spec)
    batch = random_batch(spec, 10)
    out = emb(batch["sparse"], batch["dense"])
    assert out.shape == (10, spec.d_in) == (10, 11)
    assert torch.equal(out[:, 8:], batch["dense"])


def test_out_of_range_ids_fall_back_to_oov_row() -> None:
    spec = FeatureSpec(sparse_vocab_sizes=(3,), embedding_dim=2)
    emb = FeatureEmbedding(spec)
    out = emb(torch.tensor([[0], [99], [-4]]), torch.zeros(3, 0))
    assert torch.equal(out[1], out[0]) and torch.equal(out[2], out[0])


def test_gate_weights_sum_to_one_over_experts() -> None:
    gate = Gate(4, 3)
    experts = torch.ones(2, 3, 5)
    assert torch.allclose(gate(torch.randn(2, 4), experts), torch.ones(2, 5))


def test_gate_mixes_each_rows_experts_with_that_rows_softmax_weights() -> None:
    torch.manual_seed(0)
    gate = Gate(4, 3)
    x, experts = torch.randn(5, 4), torch.randn(5, 3, 6)
    weights = torch.softmax(gate.proj(x), dim=-1)
    expected = torch.stack([sum(weights[b, e] * experts[b, e] for e in range(3)) for b in range(5)])
    assert torch.allclose(gate(x, experts), expected, atol=1e-6)


def test_mlp_and_tower_shapes() -> None:
    mlp = MLP(6, (8, 4), dropout=0.5)
    assert mlp(torch.randn(3, 6)).shape == (3, 4) and mlp.d_out == 4
    tower = Tower(6, (8, 4))
    assert tower(torch.randn(3, 6)).shape == (3,)


def test_task_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="unique"):
        coerce_tasks([{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValueError, match="binary"):
        TaskSpec("a", "ordinal")  # type: ignore[arg-type]


def test_task_losses_pick_bce_or_mse() -> None:
    tasks = coerce_tasks([{"name": "click"}, {"name": "rating", "type": "regression"}])
    out = torch.tensor([[0.0, 2.0]])
    losses = task_losses(out, torch.tensor([[1.0, 4.0]]), tasks)
    assert losses[0].item() == pytest.approx(0.693147, abs=1e-5)
    assert losses[1].item() == pytest.approx(4.0)


@dataclass(frozen=True)
class _Cfg:
    width: int = 8

    @classmethod
    def tiny(cls) -> "_Cfg":
        return cls(width=2)


def test_build_config_resolves_preset_and_names_unknown_keys() -> None:
    assert build_config(_Cfg, "tiny", {}).width == 2
    assert build_config(_Cfg, "default", {"width": 3}).width == 3
    with pytest.raises(ModelConfigError, match="depth"):
        build_config(_Cfg, "default", {"depth": 3})
    with pytest.raises(ModelConfigError, match="huge"):
        build_config(_Cfg, "huge", {})
