"""Manifest round trip and the checks a server runs before loading a package."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models.base import MultiTaskModel, random_batch
from models.data import SyntheticConfig, SyntheticWorld
from models.errors import PackageError
from models.export import export_package
from models.layers import FeatureSpec
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
        # written, then refused by the ranker at load (a KeyError traceback for the missing side)
        (lambda f: f["sparse"][2].pop("side"), "features.sparse[2] ('item_id'): side must be"),
        (lambda f: f["dense"][0].update(side="context"), "features.dense[0] ('user_dense_0'): side must be"),
        (lambda f: f["dense"][1].pop("name"), "features.dense[1]: a column is a mapping with a 'name'"),
        (lambda f: f["sparse"].reverse(), "features.sparse[2]: a user-side column after an item-side one"),
    ],
    ids=[
        "one sparse column fewer",
        "one dense column more",
        "a smaller vocabulary",
        "no side",
        "an unknown side",
        "no name",
        "items first",
    ],
)
def test_a_feature_block_that_does_not_describe_the_model_is_refused(tmp_path, change, message) -> None:
    """Exported as given: a smaller vocabulary made the ranker map real ids to the unknown id, silently."""
    model = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    features = json.loads(json.dumps(DATA.manifest_features()))
    change(features)
    with pytest.raises(PackageError, match=re.escape(message)):
        export_package(model, tmp_path, "ranker", "1", family="mmoe", features=features)
    assert not (tmp_path / "ranker").exists() or not any((tmp_path / "ranker").iterdir())


def _items(**change: object) -> dict[str, object]:
    table = dict(WORLD.item_table())  # ids [N], sparse [N, 2] (item id, category), dense [N, 2]
    table.update(change)
    return {key: value for key, value in table.items() if value is not None}


@pytest.mark.parametrize(
    "items, message",
    [
        (_items(ids=None), "item_features: no 'ids' array"),
        (_items(ids=np.array([1, 1, 2, 3, 4, 5, 6, 7, 8, 9])), "item_features['ids']: duplicate item ids"),
        (_items(ids=np.arange(10).astype(str)), "item_features['ids']: integers [N] expected, got <U"),
        (_items(sparse=np.arange(10)[:, None]), "item_features['sparse']: int64 [10, 2] expected"),
        (_items(dense=np.ones((9, 2))), "item_features['dense']: float32 [10, 2] expected"),
        (_items(dense=np.full((10, 2), np.nan)), "item_features['dense']: NaN or infinite value in row 0"),
    ],
    ids=["no ids", "duplicate ids", "string ids", "one sparse column", "a row missing", "NaN"],
)
def test_an_item_table_the_ranker_cannot_read_is_refused(tmp_path, items, message) -> None:
    """Each was written and then refused by the ranker when it loaded the package (the NaN one loaded and
    scored those items NaN)."""
    model = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    features = DATA.manifest_features()
    with pytest.raises(PackageError, match=re.escape(message)):
        export_package(model, tmp_path, "ranker", "1", family="mmoe", features=features, item_features=items)
    assert not (tmp_path / "ranker").exists() or not any((tmp_path / "ranker").iterdir())


def test_an_item_table_round_trips_in_the_contracts_dtypes(tmp_path) -> None:
    model = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    table = WORLD.item_table()
    items = {"ids": table["ids"].astype(np.int32), "sparse": table["sparse"], "dense": table["dense"].round()}
    features = DATA.manifest_features()
    path = export_package(model, tmp_path, "r", "1", "mmoe", features=features, item_features=items)
    with np.load(path / "item_features.npz", allow_pickle=False) as written:
        dtypes = {k: written[k].dtype.name for k in written.files}
        assert dtypes == {"ids": "int64", "sparse": "int64", "dense": "float32"}
        assert np.array_equal(written["ids"], table["ids"])


@pytest.mark.parametrize(
    "spec",
    [
        FeatureSpec(sparse_vocab_sizes=(6041, 3953), n_dense=0),  # ids only, as in models/README.md
        FeatureSpec(n_dense=3),
    ],
    ids=["no dense columns", "no sparse columns"],
)
def test_a_model_without_dense_or_sparse_columns_keeps_both_inputs(tmp_path, spec: FeatureSpec) -> None:
    """The exporter dropped the input nothing read: the golden check failed with ONNX Runtime's "Invalid input
    name: dense" (every such model could not be exported), and the ranker feeds both inputs."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = models.create_model("mmoe", features=spec, tasks=DATA.tasks, preset="tiny")
    path = export_package(model, tmp_path, "ids", "1", family="mmoe")
    verify_package(path, check_golden=True)
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.shape[1]) for i in session.get_inputs()]
    assert inputs == [("sparse", spec.n_sparse), ("dense", spec.n_dense)]
    batch = random_batch(spec, 3, torch.Generator().manual_seed(1))
    got = session.run(["logits"], {"sparse": batch["sparse"].numpy(), "dense": batch["dense"].numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model.eval()(batch).numpy(), atol=1e-6)


def test_regression_outputs_in_the_thousands_pass_the_parity_checks(tmp_path) -> None:
    """One float32 rounding of an output near 1,000 is 6e-5: the golden and factored checks compared |diff|
    with 1e-4 alone and refused such models now and then ("golden parity failed ... 1.22e-04 > 0.0001")."""
    tasks = [{"name": "watch_seconds", "type": "regression"}]
    for seed in range(5):
        torch.manual_seed(seed)
        model = models.create_model("mmoe", features=DATA.features, tasks=tasks, preset="tiny")
        with torch.no_grad():
            model.towers[0].out.weight.mul_(1000.0)
            model.towers[0].out.bias.fill_(1000.0)
        features = DATA.manifest_features()
        path = export_package(model, tmp_path, "seconds", str(seed), family="mmoe", features=features)
        assert (path / "factored").is_dir()
        verify_package(path, check_golden=True)


def test_a_model_that_answers_nan_is_not_exported(tmp_path) -> None:
    """NaN golden outputs passed the golden check (NaN > atol is False) and the ranker refused the package at
    load with "max |diff| nan"."""
    model = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    with torch.no_grad():
        model.towers[1].out.bias.fill_(float("nan"))
    with pytest.raises(PackageError, match="ranker/1: the model answers NaN or infinity on the golden input"):
        export_package(model, tmp_path, "ranker", "1", family="mmoe")
    assert not (tmp_path / "ranker").exists() or not any((tmp_path / "ranker").iterdir())


def test_an_export_form_that_answers_otherwise_than_the_model_is_refused(tmp_path, monkeypatch) -> None:
    """The golden outputs came from ``for_export()``'s module, the one the graph is traced from, so the parity
    check compared the graph with itself: sparse sharing's mask fold exported without its masks (0.05 off the
    trained model's logits) passed it."""
    from models.sparse_sharing import FoldedMaskedModel, MaskedSharingModel

    torch.manual_seed(0)
    model = models.create_model("sparse-sharing", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    assert isinstance(model, MaskedSharingModel)
    masks = model.masks

    def fold_without_masks() -> FoldedMaskedModel:
        with monkeypatch.context() as unmasked:  # the trained model keeps its masks
            unmasked.setattr(model, "masks", lambda task: [torch.ones_like(m) for m in masks(task)])
            return FoldedMaskedModel(model)

    monkeypatch.setattr(model, "for_export", fold_without_masks)
    with pytest.raises(PackageError, match="golden parity failed"):
        export_package(model, tmp_path, "ranker", "1", family="sparse-sharing")
    assert not any((tmp_path / "ranker").iterdir())


def test_a_package_the_os_will_not_create_or_write_is_a_one_line_error(tmp_path) -> None:
    """A repository below a file (NotADirectoryError) and a write refused by the OS (here the file size limit,
    as a full disk would) ended `python -m models export` in a traceback instead of a one-line error."""
    import resource
    import signal

    model = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    (tmp_path / "a_file").write_text("")
    below_a_file = tmp_path / "a_file" / "repo"
    not_created = f"cannot create a package in {below_a_file / 'ranker'}: "
    with pytest.raises(PackageError, match=re.escape(not_created)):
        export_package(model, below_a_file, "ranker", "1", family="mmoe")

    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of the signal
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # model.onnx is larger
    try:
        not_written = f"{tmp_path / 'ranker' / '1'}: cannot write the package: "
        with pytest.raises(PackageError, match=re.escape(not_written)):
            export_package(model, tmp_path, "ranker", "1", family="mmoe")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert not any((tmp_path / "ranker").iterdir())


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe{}", "not UTF-8 text (byte 0)"),
        (b"null", "a JSON object of manifest keys expected, got NoneType"),
        (b'[{"kind": "ranking"}]', "a JSON object of manifest keys expected, got list"),
        (None, "unreadable: Is a directory"),
        ("tasks", "tasks entries are {name, type: binary|regression}, got 1"),
    ],
    ids=["not UTF-8", "null", "a list", "a folder", "a task that is a number"],
)
def test_a_manifest_that_is_no_json_object_is_a_one_line_error(package, tmp_path, content, message) -> None:
    """Each ended `python -m models.retrieval index --package` (and verify_package) in a traceback: a
    UnicodeDecodeError, TypeErrors from Manifest.from_dict, an IsADirectoryError."""
    import shutil

    copy = tmp_path / "ranker" / "3"
    shutil.copytree(package, copy)
    manifest = copy / "manifest.json"
    if content is None:
        manifest.unlink()
        manifest.mkdir()
    elif content == "tasks":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "tasks": [1]}))
    else:
        manifest.write_bytes(content)
    with pytest.raises(PackageError, match=re.escape(f"{manifest}: {message}")):
        verify_package(copy)


def test_indexing_a_ranking_package_is_a_one_line_error(package, capsys) -> None:
    """`python -m models.retrieval index --package` of a ranking package ended in KeyError: 'fanouts'."""
    from models.retrieval import main

    assert main(["index", "--package", str(package)]) == 2
    err = capsys.readouterr().err
    expected = f"{package / 'manifest.json'}: kind is 'ranking'; only retrieval packages have an index"
    assert err == f"error: {expected}\n"
    verify_package(package)  # nothing rewritten


class Crash(BaseException):
    """The process dies at that point: a BaseException, which no error handling on the way takes for an
    error to report."""


def test_a_crash_half_way_through_an_overwrite_leaves_a_whole_version(tmp_path, monkeypatch) -> None:
    """``--overwrite`` removed the old version, then renamed the new one in: killed half-way through the
    removal it left part of the old version, which the ranker refused (a reader meanwhile found the version
    half removed or missing). Now the old version is swapped out whole, then removed."""
    import shutil

    from ranker_server.package import read_package

    model = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    target = export_package(model, tmp_path, "ranker", "1", family="mmoe", metrics={"old": 1.0})
    real_rmtree = shutil.rmtree

    def crash_half_way(path, *args, **kwargs) -> None:
        monkeypatch.setattr(shutil, "rmtree", real_rmtree)
        next(p for p in sorted(Path(path).rglob("*")) if p.is_file()).unlink()
        raise Crash

    monkeypatch.setattr(shutil, "rmtree", crash_half_way)
    with pytest.raises(Crash):
        export_package(model, tmp_path, "ranker", "1", family="mmoe", metrics={"new": 1.0}, overwrite=True)
    assert read_package(target).manifest.version == "1"  # the ranker's own reader: every file, checksummed
    assert verify_package(target, check_golden=True).metrics in ({"old": 1.0}, {"new": 1.0})


# A child process exports a new ranker/1 over the old one and is killed (os._exit) at one point of it.
KILLED_EXPORT = """
import os, pathlib, sys
import models, models.export
from models.data import SyntheticConfig, SyntheticWorld

data = SyntheticWorld(SyntheticConfig(n_users=20, n_items=10)).sample(64, embedding_dim=4)
model = models.create_model("mmoe", features=data.features, tasks=data.tasks, preset="tiny")
rename = pathlib.Path.rename
def die_at_the_rename_in(self, target):
    if self.name.endswith(".staging"):
        os._exit(9)
    return rename(self, target)
if sys.argv[2] == "writing":
    models.export.golden_io = lambda model: os._exit(9)  # model.onnx is written, the golden file is next
else:  # a file system without renameat2's exchange: the old version aside, then the new one in
    import models.publish
    models.publish._exchange = lambda first, second: False
    pathlib.Path.rename = die_at_the_rename_in
models.export.export_package(model, sys.argv[1], "ranker", "1", family="mmoe", overwrite=True)
"""


@pytest.mark.parametrize("killed", ["writing", "between the renames"])
def test_what_a_killed_export_leaves_goes_with_the_next_export(tmp_path, killed) -> None:
    """An export killed while writing left its staging folder forever (nothing removed it); one killed
    between moving the old version aside and renaming the new one in would leave the version missing. The
    next export of the model removes the first and puts the old version back from the second."""
    import subprocess
    import sys

    model = models.create_model("mmoe", features=DATA.features, tasks=DATA.tasks, preset="tiny")
    export_package(model, tmp_path, "ranker", "1", family="mmoe", metrics={"old": 1.0})
    child = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(tmp_path), killed], capture_output=True)
    assert child.returncode == 9, child.stderr.decode()
    # ranker/1 and the staging folder, or (killed between the renames) the aside and staging folders
    assert len(list((tmp_path / "ranker").iterdir())) == 2
    export_package(model, tmp_path, "ranker", "2", family="mmoe")
    assert sorted(p.name for p in (tmp_path / "ranker").iterdir()) == ["1", "2"]
    assert verify_package(tmp_path / "ranker" / "1", check_golden=True).metrics == {"old": 1.0}
