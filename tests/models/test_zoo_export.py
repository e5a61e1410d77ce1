"""Contract test over the whole ranking zoo: every registered ranking model trains a few steps on tiny
synthetic data, exports to a package, and onnxruntime (CPU) matches PyTorch within 1e-4 on 1,000 rows."""

import numpy as np
import pytest
import torch

import models
from models.base import MultiTaskModel, random_batch
from models.data import SyntheticConfig, SyntheticWorld
from models.export import export_package
from models.package import verify_package
from models.schedules import after_step, training_loss

ort = pytest.importorskip("onnxruntime")

RANKING = [name for name in models.list_models() if models.model_kind(name) == "ranking"]
WORLD = SyntheticWorld(SyntheticConfig(n_users=50, n_items=30, seed=1))
DATA = WORLD.sample(256, seed=0, embedding_dim=4)


def _train_a_few_steps(model: MultiTaskModel, steps: int = 3) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = DATA.batches(64, shuffle=True, generator=np.random.default_rng(0))
    model.train()
    for step, (batch, labels) in zip(range(steps), batches, strict=False):
        loss = training_loss(model, batch, labels, step)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        after_step(model, step)


def test_zoo_has_every_family() -> None:
    expected = {"single-task", "shared-bottom", "mmoe", "ple", "mssm", "grec", "csrec", "sparse-sharing"}
    assert expected <= set(RANKING)
    for backbone in ("single-task", "shared-bottom", "mmoe", "ple", "mssm"):
        assert {f"{backbone}+{v}" for v in ("dml", "ctfm", "gkd", "dml_v0")} <= set(RANKING)


@pytest.mark.slow
@pytest.mark.parametrize("name", RANKING)
def test_train_export_and_onnx_parity(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = models.create_model(name, features=DATA.features, tasks=DATA.tasks, preset="tiny")
    assert isinstance(model, MultiTaskModel)
    _train_a_few_steps(model)
    model.eval()
    rows = random_batch(DATA.features, 1000, torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(rows).numpy()
    assert expected.shape == (1000, len(DATA.tasks))

    target = export_package(
        model,
        tmp_path,
        "ranker",
        "1",
        family=name,
        features=DATA.manifest_features(),
        item_features=WORLD.item_table(),
    )
    manifest = verify_package(target, check_golden=True)
    assert manifest.family == name and [t["name"] for t in manifest.tasks] == ["click", "rating"]

    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["sparse", "dense"]
    assert session.get_inputs()[0].shape[0] != 1000  # symbolic batch axis, not the export batch
    got = session.run(["logits"], {"sparse": rows["sparse"].numpy(), "dense": rows["dense"].numpy()})[0]
    assert np.max(np.abs(got - expected)) <= 1e-4
    one = session.run(["logits"], {"sparse": rows["sparse"][:1].numpy(), "dense": rows["dense"][:1].numpy()})[
        0
    ]
    assert np.max(np.abs(one - expected[:1])) <= 1e-4
    none = {"sparse": rows["sparse"][:0].numpy(), "dense": rows["dense"][:0].numpy()}
    assert session.run(["logits"], none)[0].shape == (0, len(DATA.tasks))  # retrieval found no candidates
