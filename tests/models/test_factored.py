"""Rank's factored graphs (models.factored): which layers are found, when a model factors, and that the graphs give
the model's answers through ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import models
from models.baselines.mmoe import MMoE, MMoEConfig
from models.errors import PackageError
from models.export import OPSET, export_package
from models.factored import ITEMS_FILE, RANK_FILE, SideLayout, export_factored, input_layers
from models.layers import FeatureSpec

ort = pytest.importorskip("onnxruntime")

SPEC = FeatureSpec(
    sparse_vocab_sizes=(30, 40, 20), n_dense=3, sparse_names=("user_id", "item_id", "category")
)
TASKS = [{"name": "click", "type": "binary"}, {"name": "rating", "type": "regression"}]
SIDES = SideLayout(user_sparse=1, item_sparse=2, user_dense=1, item_dense=2)
FEATURES = {
    "sparse": [
        {"name": "user_id", "vocab_size": 30, "side": "user"},
        {"name": "item_id", "vocab_size": 40, "side": "item"},
        {"name": "category", "vocab_size": 20, "side": "item"},
    ],
    "dense": [
        {"name": "age", "side": "user"},
        {"name": "price", "side": "item"},
        {"name": "ctr", "side": "item"},
    ],
}
RANKING = [name for name in models.list_models() if models.model_kind(name) == "ranking"]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return models.create_model(name, features=SPEC, tasks=TASKS, preset="tiny").eval().for_export().eval()


def test_side_layout_reads_the_feature_block() -> None:
    assert SideLayout.from_features(FEATURES) == SIDES
    swapped = {"sparse": FEATURES["sparse"][::-1], "dense": FEATURES["dense"]}
    assert SideLayout.from_features(swapped) is None  # an item column before a user one


def test_input_layers_of_mmoe_are_every_expert_first_layer_and_every_gate() -> None:
    model = build("mmoe")
    found = [layer.linear for layer in input_layers(model)]
    expected = [expert.net[0] for expert in model.experts] + [gate.proj for gate in model.gates]
    assert found == expected
    assert {layer.embedding for layer in input_layers(model)} == {model.embedding}


@pytest.mark.parametrize("name", RANKING)
def test_every_family_factors_with_the_model_answers_or_writes_nothing(name: str, tmp_path: Path) -> None:
    """export_factored checks its graphs through ONNX Runtime; here the rows are built again independently."""
    model = build(name)
    written = export_factored(model, tmp_path, SIDES, OPSET)
    if name == "grec":  # its transformer reads the per-feature embeddings, not through input Linears
        assert not written and not (tmp_path / "factored").exists()
        return
    assert written
    rng = np.random.default_rng(3)
    items_sparse = np.stack([rng.integers(0, 40, 20), rng.integers(0, 20, 20)], 1)
    items_dense = rng.normal(size=(20, 2)).astype(np.float32)
    parts_session = ort.InferenceSession(str(tmp_path / ITEMS_FILE), providers=["CPUExecutionProvider"])
    names = [o.name for o in parts_session.get_outputs()]
    parts = parts_session.run(names, {"item_sparse": items_sparse, "item_dense": items_dense})
    user_sparse, user_dense = np.array([[4], [29]]), np.array([[0.5], [-1.0]], np.float32)
    rows, segment = np.array([0, 19, 7, 7, 3]), np.array([0, 0, 0, 1, 1])
    feeds = {"user_sparse": user_sparse, "user_dense": user_dense, "rows": rows, "segment": segment}
    rank = ort.InferenceSession(str(tmp_path / RANK_FILE), providers=["CPUExecutionProvider"])
    logits = rank.run(["logits"], feeds | dict(zip(names, parts, strict=True)))[0]
    batch = {
        "sparse": torch.from_numpy(np.concatenate([user_sparse[segment], items_sparse[rows]], 1)),
        "dense": torch.from_numpy(np.concatenate([user_dense[segment], items_dense[rows]], 1)),
    }
    with torch.no_grad():
        expected = model(batch).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-4)


class _WideMMoE(MMoE):
    """An MMoE with a wide term on the raw features: they feed more than the input Linears."""

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x = self.embedding(batch["sparse"], batch["dense"])
        return super().forward(batch) + x.sum(-1, keepdim=True)


def test_a_model_whose_features_feed_more_than_its_input_layers_gets_no_factored_graphs(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = _WideMMoE(SPEC, TASKS, MMoEConfig.tiny()).eval()
    assert input_layers(model)  # the experts and gates are found...
    assert not export_factored(model, tmp_path, SIDES, OPSET)  # ...but the wide term reads NaN in the check
    assert not (tmp_path / "factored").exists()


def test_a_factored_graph_that_disagrees_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models import factored

    original = factored.ItemParts.forward

    def off_by_one(self, item_sparse: Tensor, item_dense: Tensor) -> tuple[Tensor, ...]:
        return tuple(part + 1.0 for part in original(self, item_sparse, item_dense))

    monkeypatch.setattr(factored.ItemParts, "forward", off_by_one)
    with pytest.raises(PackageError, match="factored graphs differ"):
        export_factored(build("mmoe"), tmp_path, SIDES, OPSET)


def test_packages_carry_factored_graphs_only_with_item_side_columns(tmp_path: Path) -> None:
    model = build("mmoe")
    with_items = export_package(model, tmp_path, "m", "1", "mmoe", features=FEATURES)
    assert (with_items / ITEMS_FILE).is_file() and (with_items / RANK_FILE).is_file()
    manifest = (with_items / "manifest.json").read_text()
    assert ITEMS_FILE in manifest and RANK_FILE in manifest  # checksummed like every file
    user_only = export_package(model, tmp_path, "m", "2", "mmoe")  # default features: all user-side
    assert not (user_only / "factored").exists()


def test_sides_without_dense_columns_factor_too(tmp_path: Path) -> None:
    spec = FeatureSpec(sparse_vocab_sizes=(30, 40), n_dense=0, sparse_names=("user_id", "item_id"))
    torch.manual_seed(0)
    model = models.create_model("mmoe", features=spec, tasks=TASKS, preset="tiny").eval()
    assert export_factored(model, tmp_path, SideLayout(1, 1, 0, 0), OPSET)  # its own ORT parity check passed
    assert not export_factored(model, tmp_path / "none", SideLayout(0, 2, 0, 0), OPSET)  # no user id column


def test_a_model_the_exporter_cannot_trace_is_exported_without_factored_graphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from models import factored

    def untraceable(self, *args: Tensor) -> Tensor:
        raise RuntimeError("data-dependent control flow")

    monkeypatch.setattr(factored.FactoredRank, "forward", untraceable)
    path = export_package(build("mmoe"), tmp_path, "m", "1", "mmoe", features=FEATURES)
    assert (path / "model.onnx").is_file() and not (path / "factored").exists()
    assert "the exporter failed: data-dependent control flow" in caplog.text
