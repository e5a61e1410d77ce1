"""Manifest round trip and the checks a server runs before loading a package."""

import json

import numpy as np
import pytest
import torch

import models
from models.base import MultiTaskModel
from models.data import SyntheticConfig, SyntheticWorld
from models.errors import PackageError
from models.export import export_package
from models.package import Manifest, read_manifest, verify_package

pytest.importorskip("onnxruntime")
WORLD = SyntheticWorld(SyntheticConfig(n_users=20, n_items=10))
DATA = WORLD.sample(64, embedding_dim=4)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create_model("mmoe+dml", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    return export_package(
        model,
        tmp_path_factory.mktemp("repo"),
        "ranker",
        "3",
        family="mmoe+dml",
        features=DATA.manifest_features(),
        training_config={"model": "mmoe+dml"},
        metrics={"auc/click": 0.7},
        item_features=WORLD.item_table(),
    )


def test_layout_and_manifest_follow_the_contract(package) -> None:
    assert package.parts[-2:] == ("ranker", "3")
    assert {p.name for p in package.iterdir()} == {
        "model.onnx",
        "manifest.json",
        "golden.npz",
        "item_features.npz",
        "factored",  # the MMoE has item-side columns: Rank's factored graphs (models.factored)
    }
    raw = json.loads((package / "manifest.json").read_text())
    assert raw["format_version"] == 1 and raw["kind"] == "ranking" and raw["version"] == "3"
    assert raw["inputs"] == [
        {"name": "sparse", "dtype": "int64", "shape": [-1, 4]},
        {"name": "dense", "dtype": "float32", "shape": [-1, 4]},
    ]
    assert raw["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, 2]}]
    assert [c["side"] for c in raw["features"]["sparse"]] == ["user", "user", "item", "item"]
    assert set(raw["files"]) == {"golden.npz", "item_features.npz", "factored/items.onnx", "factored/rank.onnx"}
    with np.load(package / "golden.npz") as golden:
        assert set(golden.files) == {"sparse", "dense", "logits"}
    with np.load(package / "item_features.npz") as items:
        assert (
            items["ids"].dtype == np.int64
            and items["sparse"].shape == (10, 2)
            and items["dense"].shape == (10, 2)
        )
    assert verify_package(package, check_golden=True).metrics == {"auc/click": 0.7}


def test_manifest_round_trip(package) -> None:
    manifest = read_manifest(package)
    assert Manifest.from_dict(manifest.to_dict()) == manifest


def test_tampered_files_are_rejected(package, tmp_path) -> None:
    import shutil

    copy = tmp_path / "ranker" / "3"
    shutil.copytree(package, copy)
    with open(copy / "golden.npz", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(PackageError, match="golden.npz"):
        verify_package(copy)
    shutil.copy(package / "golden.npz", copy / "golden.npz")
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(PackageError, match="onnx_sha256"):
        verify_package(copy)


def test_manifest_errors_name_the_key(package) -> None:
    data = read_manifest(package).to_dict()
    with pytest.raises(PackageError, match="unknown keys \\['colour'\\]"):
        Manifest.from_dict({**data, "colour": "red"})
    with pytest.raises(PackageError, match="missing keys \\['family'\\]"):
        Manifest.from_dict({k: v for k, v in data.items() if k != "family"})
    with pytest.raises(PackageError, match="version must be a string"):
        Manifest.from_dict({**data, "version": 3})


def test_existing_version_is_not_overwritten(package) -> None:
    model = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    with pytest.raises(PackageError, match="already exists"):
        export_package(model, package.parents[1], "ranker", "3", family="mmoe")


def test_two_exports_of_one_version_at_once_never_mix(tmp_path, monkeypatch) -> None:
    """A second export of the version starts and finishes while the first is half-way: the second is published
    whole, and the first fails with a PackageError instead of crashing in a staging folder the second wiped."""
    import models.export

    real_golden_io = models.export.golden_io
    published: list[object] = []

    def golden_io_racing(model: MultiTaskModel) -> dict[str, np.ndarray]:
        if model is first:  # the first export has written model.onnx: the second one runs to the end now
            published.append(export_package(second, tmp_path, "ranker", "1", family="mmoe"))
        return real_golden_io(model)

    torch.manual_seed(1)
    first = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    second = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    monkeypatch.setattr(models.export, "golden_io", golden_io_racing)
    with pytest.raises(PackageError, match="already exists"):
        export_package(first, tmp_path, "ranker", "1", family="mmoe")
    assert published == [tmp_path / "ranker" / "1"]
    verify_package(tmp_path / "ranker" / "1", check_golden=True)
    assert [p.name for p in (tmp_path / "ranker").iterdir()] == ["1"]  # no staging folder left behind


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f["sparse"].pop(0), "features list"),
        (lambda f: f["dense"].append({"name": "extra", "side": "item"}), "features list"),
        (lambda f: f["sparse"][0].update(vocab_size=f["sparse"][0]["vocab_size"] - 1), "features.sparse[0]"),
    ],
    ids=["one sparse column fewer", "one dense column more", "a smaller vocabulary"],
)
def test_a_feature_block_that_does_not_describe_the_model_is_refused(tmp_path, change, message) -> None:
    """Exported as given: a smaller vocabulary made the ranker map real ids to the unknown id, silently."""
    model = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    features = json.loads(json.dumps(DATA.manifest_features()))
    change(features)
    with pytest.raises(PackageError, match=message.replace("[", r"\[")):
        export_package(model, tmp_path, "ranker", "1", family="mmoe", features=features)
    assert not (tmp_path / "ranker").exists() or not any((tmp_path / "ranker").iterdir())
