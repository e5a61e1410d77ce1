"""SSMTL retrieval model: graph data, sampling, losses, training, ONNX export parity and the package/index job."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import PackageError
from models.graph.datasets import SHA256, GraphDataError, load_ego_facebook, synthetic_graph, write_verified
from models.graph.export import build_index, onnx_inputs, write_package
from models.graph.metrics import per_user_metrics, summarise
from models.graph.sampling import NeighbourSampler
from models.graph.split import split_edges
from models.graph.training import TrainConfig, embed_all, evaluate, load_checkpoint, save_checkpoint, train
from models.package import read_manifest, sha256_file, verify_package
from models.registry import create_model, list_models, model_kind
from models.ssmtl import SSMTL, cca_loss, in_batch_non_negatives, retrieval_loss, scaled_cosine_error

ort = pytest.importorskip("onnxruntime")

EGO_FACEBOOK = Path(__file__).resolve().parents[3] / "shared" / "data" / "ego-facebook"
TINY = {"hidden_dim": 16, "embed_dim": 8, "heads": 2, "fanouts": (4, 3), "ssl_nodes": 16}


@pytest.fixture(scope="module")
def graph():
    return synthetic_graph(num_nodes=300, num_features=32, num_communities=10, mean_degree=8, seed=1)


@pytest.fixture(scope="module")
def trained(graph):
    torch.set_num_threads(1)
    config = TrainConfig(dataset="synthetic", steps=60, batch_size=64, eval_every=20, lr=1e-2, model=TINY)
    return train(config, graph=graph, progress=False)


def test_registered_as_retrieval_model():
    assert "ssmtl" in list_models()
    model = create_model("ssmtl", num_features=5, **TINY)
    assert isinstance(model, SSMTL) and model.kind == "retrieval" and model_kind("ssmtl") == "retrieval"


def test_split_partitions_edges(graph):
    split = split_edges(graph.edges, 0.1, 0.2, seed=3)
    together = np.concatenate([split.train, split.val, split.test])
    assert len(together) == len(graph.edges)
    assert len(np.unique(together, axis=0)) == len(graph.edges)
    assert len(split.test) == round(0.2 * len(graph.edges))
    again = split_edges(graph.edges, 0.1, 0.2, seed=3)
    assert np.array_equal(again.test, split.test)


def test_sampler_dense_shapes_masks_and_exclusion(graph):
    sampler = NeighbourSampler(graph.num_nodes, graph.edges, (4, 3))
    nodes = np.arange(graph.num_nodes)
    nb = sampler.sample(nodes, np.random.default_rng(0))
    assert nb.hop1.shape == (len(nodes), 4) and nb.hop2.shape == (len(nodes), 12)
    degree = sampler.degree()
    assert np.array_equal(nb.hop1_mask.sum(1), np.minimum(degree, 4))
    neighbours = {u: set(sampler.indices[sampler.indptr[u] : sampler.indptr[u + 1]]) for u in nodes}
    for u in nodes:
        real = nb.hop1[u][nb.hop1_mask[u] > 0]
        assert len(set(real)) == len(real)  # no neighbour twice
        assert set(real) <= neighbours[u]
        for j in range(4):
            children = nb.hop2[u, j * 3 : (j + 1) * 3][nb.hop2_mask[u, j * 3 : (j + 1) * 3] > 0]
            assert nb.hop1_mask[u, j] > 0 or len(children) == 0
            assert set(children) <= neighbours[int(nb.hop1[u, j])]
    partner = nb.hop1[:, 0].copy()
    excluded = sampler.sample(nodes, np.random.default_rng(0), exclude=partner)
    has = degree > 0
    assert not np.any((excluded.hop1 == partner[:, None]) & (excluded.hop1_mask > 0))
    assert not np.any((excluded.hop2 == partner[:, None]) & (excluded.hop2_mask > 0))
    assert has.any()


def test_losses_follow_equations():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    expected = torch.nn.functional.cross_entropy(q @ q.T / 0.5, torch.arange(6))
    assert torch.allclose(retrieval_loss(q, q, 0.5), expected)
    z = torch.randn(64, 3)
    assert cca_loss(z, z, 0.0).item() == pytest.approx(0.0, abs=1e-6)
    assert cca_loss(z, -z, 0.0).item() == pytest.approx(4 * 3, rel=1e-3)  # ||Za - Zb||^2 with unit columns
    x = torch.rand(5, 7) + 0.1
    assert scaled_cosine_error(x, 3 * x, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert scaled_cosine_error(x, -x, 2.0).item() == pytest.approx(4.0, rel=1e-5)  # (1 - (-1))^2


def test_baseline_has_no_ssl_terms_and_ssmtl_has_all(graph):
    sampler = NeighbourSampler(graph.num_nodes, graph.edges, (4, 3))
    features = torch.from_numpy(graph.features)
    pairs = graph.edges[:16]
    baseline = create_model("ssmtl", num_features=graph.num_features, **TINY, beta=0.0, gamma=0.0)
    losses = baseline.training_losses(features, sampler, pairs, np.random.default_rng(0))
    assert losses["cca"].item() == 0.0 and losses["mae"].item() == 0.0
    assert losses["total"].item() == pytest.approx(losses["retrieval"].item())
    full = create_model("ssmtl", num_features=graph.num_features, **TINY, alpha=1.0, beta=0.5, gamma=2.0)
    losses = full.training_losses(features, sampler, pairs, np.random.default_rng(0))
    assert losses["cca"].item() > 0 and losses["mae"].item() > 0
    total = losses["retrieval"] + 0.5 * losses["cca"] + 2.0 * losses["mae"]
    assert losses["total"].item() == pytest.approx(total.item(), rel=1e-6)
    losses["total"].backward()
    assert full.mask_token.grad is not None and full.cca_head[0].weight.grad is not None
    assert full.decoder.proj.weight.grad is not None


def test_gather_route_equals_forward_contract(trained, graph):
    nb = trained.sampler.sample(np.arange(10), np.random.default_rng(5))
    with torch.no_grad():
        gathered = trained.model.embed_sampled(nb, torch.from_numpy(graph.features))
        direct = trained.model({k: torch.from_numpy(v) for k, v in onnx_inputs(nb, graph.features).items()})
    assert torch.allclose(gathered, direct, atol=1e-5)
    assert torch.allclose(direct.norm(dim=1), torch.ones(10), atol=1e-5)


def test_training_beats_its_own_initialisation(trained, graph):
    after = evaluate(trained, "test")["overall"]
    torch.manual_seed(trained.config.seed)  # train() seeds torch the same way before building the model
    initial = create_model("ssmtl", num_features=graph.num_features, **TINY)
    per_user = per_user_metrics(
        embed_all(initial, torch.from_numpy(graph.features), trained.sampler),
        np.concatenate([trained.split.train, trained.split.val]),
        trained.split.test,
    )
    assert after["mrr"] > per_user["mrr"].mean()
    assert after["recall@10"] > per_user["recall@10"].mean()
    assert set(after) >= {"users", "recall@10", "recall@50", "recall@100", "mrr", "ndcg@50"}


def test_metrics_on_a_known_ranking():
    emb = np.array([[1.0, 0.0], [0.95, 0.3], [0.0, 1.0], [0.8, 0.2]], dtype=np.float32)
    known = np.array([[0, 1]])
    heldout = np.array([[0, 3]])
    per_user = per_user_metrics(emb, known, heldout, ks=(1, 2), ndcg_k=2)
    row = list(per_user["user"]).index(0)
    assert (
        per_user["recall@1"][row] == 1.0 and per_user["mrr"][row] == 1.0
    )  # friend 1 excluded, 3 ranks first
    row3 = list(per_user["user"]).index(3)
    assert per_user["mrr"][row3] == pytest.approx(0.5)  # node 1 outranks node 0 for user 3
    table = summarise(per_user, degree=np.array([1, 1, 0, 0]))
    assert table["overall"]["users"] == 2 and table["cold (deg<=2)"]["users"] == 2


def test_metrics_with_cut_offs_past_the_node_count() -> None:
    """K >= the number of nodes ranks every candidate (it raised "kth out of bounds" from argpartition)."""
    emb = np.array([[1.0], [0.5], [0.9], [0.1]])  # user 0 ranks 2, 1, 3; user 1 ranks 0, 2, 3
    per_user = per_user_metrics(emb, np.zeros((0, 2), np.int64), np.array([[0, 1]]), ks=(2, 4, 10), ndcg_k=10)
    assert per_user["user"].tolist() == [0, 1]
    assert per_user["recall@2"].tolist() == per_user["recall@10"].tolist() == [1.0, 1.0]
    assert per_user["mrr"].tolist() == [0.5, 1.0]
    # the held-out friend at rank 2 gains 1 / log2(3) of an ideal 1 / log2(2)
    assert per_user["ndcg@10"] == pytest.approx([1 / np.log2(3), 1.0])


def test_onnx_export_parity_package_and_index(trained, graph, tmp_path):
    package = write_package(trained, tmp_path, "ssmtl", "1", {"test/recall@50": 0.5})
    assert verify_package(package, check_golden=True).kind == "retrieval"  # the models package's own checks
    assert read_manifest(package).training_config["fanouts"] == [4, 3]
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["kind"] == "retrieval" and manifest["family"] == "ssmtl" and manifest["version"] == "1"
    assert manifest["onnx_sha256"] == sha256_file(package / "model.onnx")
    assert set(manifest["files"]) == {"golden.npz", "index/graph.npz", "index/embeddings.npy"}
    for rel, digest in manifest["files"].items():
        assert sha256_file(package / rel) == digest
    assert manifest["training_config"]["fanouts"] == [4, 3]
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i["name"] for i in manifest["inputs"]]
    golden = np.load(package / "golden.npz")
    feeds = {i.name: golden[i.name] for i in session.get_inputs()}
    np.testing.assert_allclose(session.run(["embedding"], feeds)[0], golden["embedding"], atol=1e-4)
    # a batch size different from the traced one (dynamic axis) and fresh neighbourhoods
    nb = trained.sampler.sample(np.arange(37), np.random.default_rng(9))
    feeds = onnx_inputs(nb, graph.features)
    with torch.no_grad():
        expected = trained.model({k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    np.testing.assert_allclose(session.run(["embedding"], feeds)[0], expected, atol=1e-4)
    index = np.load(package / "index" / "embeddings.npy")
    torch_index = embed_all(trained.model, torch.from_numpy(graph.features), trained.sampler)
    np.testing.assert_allclose(index, torch_index, atol=1e-4)
    assert np.array_equal(build_index(package), index)


def test_checkpoint_round_trip(trained, graph, tmp_path):
    save_checkpoint(trained, tmp_path / "ckpt.pt")
    loaded = load_checkpoint(tmp_path / "ckpt.pt", graph=graph)
    assert np.array_equal(loaded.split.test, trained.split.test)
    a = embed_all(loaded.model, torch.from_numpy(graph.features), loaded.sampler)
    b = embed_all(trained.model, torch.from_numpy(graph.features), trained.sampler)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_download_verification_writes_nothing_on_mismatch(tmp_path):
    files = {name: b"x" for name in SHA256}
    with pytest.raises(GraphDataError, match="sha256"):
        write_verified(tmp_path, files)
    assert not any(tmp_path.iterdir())
    with pytest.raises(GraphDataError, match="missing"):
        write_verified(tmp_path, {"facebook_combined.txt": b""})


@pytest.mark.skipif(not EGO_FACEBOOK.is_dir(), reason="shared ego-Facebook data not present")
def test_ego_facebook_loader_matches_published_counts():
    g = load_ego_facebook(EGO_FACEBOOK)
    assert g.num_nodes == 4039 and len(g.edges) == 88234 and g.num_features == 1283
    assert set(np.unique(g.features)) <= {0.0, 1.0}
    assert np.all(g.edges[:, 0] < g.edges[:, 1])


def test_loader_rejects_tampered_file(tmp_path):
    (tmp_path / "facebook_combined.txt").write_text("0 1\n")
    with pytest.raises(GraphDataError, match="sha256"):
        load_ego_facebook(tmp_path)
    with pytest.raises(GraphDataError, match="not found"):
        load_ego_facebook(tmp_path / "nowhere")


def test_command_line_train_evaluate_export_index(tmp_path, capsys):
    from models.retrieval import main

    checkpoint = tmp_path / "ckpt.pt"
    assert main(["train", "--dataset", "synthetic", "--out", str(checkpoint), "--steps", "4", "--batch-size", "16",
                 "--eval-every", "2", "--baseline", "--set", "hidden_dim=16", "--set", "embed_dim=8",
                 "--set", "heads=2", "--set", "fanouts=[4, 3]"]) == 0
    assert json.loads(capsys.readouterr().out)["users"] > 0
    assert main(["evaluate", "--checkpoint", str(checkpoint)]) == 0
    table = json.loads(capsys.readouterr().out)
    assert {"overall", "low (deg<=10)"} <= set(table)
    assert main(["export", "--checkpoint", str(checkpoint), "--repository", str(tmp_path / "repo"),
                 "--name", "baseline", "--version", "3"]) == 0
    package = tmp_path / "repo" / "baseline" / "3"
    manifest = verify_package(package, check_golden=True)
    assert manifest.training_config["model"]["beta"] == 0.0 and "test/recall@50" in manifest.metrics
    before = (package / "index" / "embeddings.npy").read_bytes()
    assert main(["index", "--package", str(package)]) == 0
    assert (package / "index" / "embeddings.npy").read_bytes() == before
    verify_package(package)


def test_a_retrieval_export_never_replaces_a_version_or_leaves_the_repository(trained, tmp_path, capsys):
    """write_package wrote into ``<repository>/<name>/<version>/`` in place: a second export of a served
    version silently replaced its files (no overwrite flag), and ``--name ../x`` wrote outside the repository.
    """
    from models.retrieval import main

    repo = tmp_path / "repo"
    first = write_package(trained, repo, "ssmtl", "1")
    onnx = (first / "model.onnx").read_bytes()
    with pytest.raises(PackageError, match="already exists"):
        write_package(trained, repo, "ssmtl", "1", {"test/recall@50": 0.5})
    assert (first / "model.onnx").read_bytes() == onnx and read_manifest(first).metrics == {}
    assert [p.name for p in (repo / "ssmtl").iterdir()] == ["1"]  # no staging folder left behind
    replaced = write_package(trained, repo, "ssmtl", "1", {"m": 1.0}, overwrite=True)
    assert read_manifest(replaced).metrics == {"m": 1.0}
    with pytest.raises(PackageError, match="must be one folder name"):
        write_package(trained, repo, "../elsewhere", "1")
    assert not (tmp_path / "elsewhere").exists()
    checkpoint = tmp_path / "ckpt.pt"
    save_checkpoint(trained, checkpoint)
    args = ["export", "--checkpoint", str(checkpoint), "--repository", str(repo), "--name", "ssmtl"]
    assert main([*args, "--version", "1"]) == 2  # a one-line error, no traceback
    err = capsys.readouterr().err
    expected = f"error: {repo / 'ssmtl' / '1'} already exists (--overwrite, or overwrite=True, replaces it)\n"
    assert err == expected
    assert main([*args, "--version", "1", "--overwrite"]) == 0
    verify_package(repo / "ssmtl" / "1", check_golden=True)


@pytest.mark.parametrize("problem", ["missing", "folder", "foreign", "unwritable"])
def test_retrieval_checkpoint_problems_are_one_line(tmp_path, capsys, problem: str) -> None:
    """A missing, foreign or unwritable checkpoint ended `python -m models.retrieval` in a traceback."""
    import torch

    from models.retrieval import main

    checkpoint = tmp_path / "ckpt.pt"
    if problem == "folder":
        checkpoint.mkdir()
    elif problem == "foreign":
        torch.save({"weights": [1, 2]}, checkpoint)
    if problem == "unwritable":
        out = tmp_path / "no" / "such" / "ckpt.pt"
        argv = ["train", "--dataset", "synthetic", "--out", str(out), "--steps", "1", "--batch-size", "16"]
        expected = "cannot write checkpoint"
    else:
        argv = ["evaluate", "--checkpoint", str(checkpoint)]
        expected = {"missing": "not found", "folder": "is not a file", "foreign": "it lacks"}[problem]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err


class _RecordingSampler(NeighbourSampler):
    """Records every ``sample`` call (nodes asked for and the neighbourhood returned)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list = []

    def sample(self, nodes, rng, exclude=None):
        nb = super().sample(nodes, rng, exclude)
        self.calls.append(nb)
        return nb


def test_ssl_queries_are_drawn_from_all_query_ids_not_the_lowest(graph):
    """The SSL losses use ``ssl_nodes`` of the batch's queries; before the fix they were always the
    ``ssl_nodes`` lowest ids (``np.unique(queries)[:n]``), so high ids never got an SSL loss."""
    sampler = _RecordingSampler(graph.num_nodes, graph.edges, (4, 3))
    model = create_model("ssmtl", num_features=graph.num_features, **TINY, beta=0.0, gamma=1.0)
    features = torch.from_numpy(graph.features)
    rng = np.random.default_rng(0)
    pairs = graph.edges[rng.permutation(len(graph.edges))[:128]]
    queries = np.unique(pairs[:, 0])
    chosen = []
    for _ in range(10):
        sampler.calls.clear()
        model.training_losses(features, sampler, pairs, rng)
        ssl = sampler.calls[2].nodes  # after the queries' and the candidates' neighbourhoods
        assert len(ssl) == TINY["ssl_nodes"] and set(ssl) <= set(queries)
        chosen.append(ssl)
    chosen = np.concatenate(chosen)
    assert chosen.max() > np.quantile(queries, 0.9)
    assert len(np.unique(chosen)) > 3 * TINY["ssl_nodes"]  # different queries on different steps


def test_cca_uses_every_node_of_the_ssl_subgraph(graph, monkeypatch):
    """Eq. 3 standardises and decorrelates over the n nodes of the sampled subgraph (n >> embedding width),
    not over the ``ssl_nodes`` query users alone."""
    import models.ssmtl as ssmtl

    seen = []
    real = ssmtl.cca_loss

    def recording(za, zb, lam):
        seen.append(za.shape)
        return real(za, zb, lam)

    monkeypatch.setattr(ssmtl, "cca_loss", recording)
    sampler = _RecordingSampler(graph.num_nodes, graph.edges, (4, 3))
    model = create_model("ssmtl", num_features=graph.num_features, **TINY, beta=1.0, gamma=0.0)
    pairs = graph.edges[:64]
    model.training_losses(torch.from_numpy(graph.features), sampler, pairs, np.random.default_rng(1))
    nb = sampler.calls[2]
    subgraph = np.unique(np.concatenate([nb.nodes, nb.hop1[nb.hop1_mask > 0], nb.hop2[nb.hop2_mask > 0]]))
    assert len(subgraph) > 4 * TINY["embed_dim"]
    assert seen == [(len(subgraph), TINY["embed_dim"])]


def test_cold_start_split_hides_all_but_a_few_friendships_of_its_users(graph):
    from models.graph.split import cold_start_split

    split = cold_start_split(graph.edges, graph.num_nodes, 0.1, 0.2, n_cold=40, max_visible=3, seed=2)
    together = np.concatenate([split.train, split.val, split.test])
    assert len(together) == len(graph.edges) == len(np.unique(together, axis=0))
    assert len(split.cold_users) == 40 and len(np.unique(split.cold_users)) == 40
    train_degree = np.bincount(split.train.reshape(-1), minlength=graph.num_nodes)
    assert train_degree[split.cold_users].max() <= 3
    heldout = np.concatenate([split.val, split.test]).reshape(-1)
    assert np.isin(split.cold_users, heldout).all()  # every cold user has friendships left to find
    again = cold_start_split(graph.edges, graph.num_nodes, 0.1, 0.2, n_cold=40, max_visible=3, seed=2)
    assert np.array_equal(again.test, split.test) and np.array_equal(again.cold_users, split.cold_users)
    base = split_edges(graph.edges, 0.1, 0.2, seed=2)
    assert len(split.train) < len(base.train)  # only training edges moved, the random split's held-out stay
    assert {tuple(e) for e in base.test} <= {tuple(e) for e in split.test}


def test_training_reports_cold_slice_loss_means_and_gradient_norms(graph):
    config = TrainConfig(
        dataset="synthetic", steps=6, batch_size=32, eval_every=3, split="cold-start", cold_users=30,
        model={**TINY, "beta": 0.1, "gamma": 0.1},
    )  # fmt: skip
    result = train(config, graph=graph, progress=False)
    assert len(result.split.cold_users) == 30
    table = evaluate(result, "test")
    assert 0 < table["cold-start users"]["users"] <= 30
    entry = result.history[-1]
    assert {"retrieval", "cca", "mae", "total", "grad/retrieval", "grad/cca", "grad/mae"} <= set(entry)
    assert entry["grad/cca"] > 0 and entry["grad/mae"] > 0
    assert "val_recall@50/cold-start users" in entry
    saved = load_checkpoint_round_trip(result)
    assert np.array_equal(saved.split.cold_users, result.split.cold_users)


def load_checkpoint_round_trip(result):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(result, Path(folder) / "ckpt.pt")
        return load_checkpoint(Path(folder) / "ckpt.pt", graph=result.graph)


def test_sparse_projection_equals_the_dense_one(graph):
    model = create_model("ssmtl", num_features=graph.num_features, **TINY).eval()
    x = torch.from_numpy(graph.features[:50])
    with torch.no_grad():
        assert torch.allclose(model.encoder.embed_sparse_rows(x), model.encoder.embed_nodes(x), atol=1e-6)
    model.train()
    weight = model.encoder.input.weight
    model.encoder.embed_sparse_rows(x).sum().backward()
    assert weight.grad is not None and torch.count_nonzero(weight.grad) > 0


def test_retrieval_loss_takes_known_friends_out_of_the_negatives():
    """Eq. 5 by hand on three pairs where candidate 2 is also a friend of query 0 (tau = 1)."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    not_negative = torch.zeros(3, 3, dtype=torch.bool)
    not_negative[0, 2] = True

    def ce(positive: float, others: list[float]) -> float:
        return -positive + math.log(math.exp(positive) + sum(math.exp(o) for o in others))

    # logits q c^T = [[1, 0, .8], [0, 1, .6], [.6, .8, .96]]; (0, 2) leaves query 0's row and candidate 2's column
    by_query = [ce(1.0, [0.0]), ce(1.0, [0.0, 0.6]), ce(0.96, [0.6, 0.8])]
    by_candidate = [ce(1.0, [0.0, 0.6]), ce(1.0, [0.0, 0.8]), ce(0.96, [0.6])]
    expected = 0.5 * (sum(by_query) / 3 + sum(by_candidate) / 3)
    assert retrieval_loss(q, c, 1.0, not_negative).item() == pytest.approx(expected, rel=1e-6)
    with_diagonal = not_negative | torch.eye(3, dtype=torch.bool)  # a positive itself is never removed
    assert retrieval_loss(q, c, 1.0, with_diagonal).item() == pytest.approx(expected, rel=1e-6)
    assert retrieval_loss(q, c, 1.0).item() > expected + 0.1


def test_in_batch_non_negatives_are_friends_the_query_itself_and_repeated_users(graph):
    sampler = NeighbourSampler(graph.num_nodes, graph.edges, (4, 3))
    friends = {(int(u), int(v)) for u, v in graph.edges} | {(int(v), int(u)) for u, v in graph.edges}
    u, v = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    truth = [[(a, b) in friends for b in range(40)] for a in range(40)]
    assert np.array_equal(sampler.are_neighbours(u, v), truth)
    rng = np.random.default_rng(3)
    pairs = graph.edges[rng.integers(0, len(graph.edges), 48)]
    # repeated pairs, reversed pairs, and a candidate that is another row's query
    pairs = np.concatenate([pairs, pairs[:4], pairs[4:8, ::-1], [[pairs[0, 0], pairs[9, 0]]]])
    queries, candidates = pairs[:, 0], pairs[:, 1]
    expected = [
        [
            i != j
            and (
                (int(queries[i]), int(candidates[j])) in friends
                or candidates[j] in (queries[i], candidates[i])
                or queries[j] == queries[i]
            )
            for j in range(len(pairs))
        ]
        for i in range(len(pairs))
    ]
    got = in_batch_non_negatives(sampler, queries, candidates)
    assert got.dtype == torch.bool and np.array_equal(got.numpy(), expected)
    assert got.sum() > len(pairs)  # the case matters: more than one per row on average here


def test_training_never_scores_a_friend_as_a_negative(graph):
    """A batch of one friendship repeated: every other candidate is that same friend, so nothing is a negative
    and Eq. 5 is exactly 0 (before the fix each row had B - 1 copies of its own positive as negatives)."""
    sampler = NeighbourSampler(graph.num_nodes, graph.edges, (4, 3))
    model = create_model("ssmtl", num_features=graph.num_features, **TINY, beta=0.0, gamma=0.0)
    pairs = np.repeat(graph.edges[:1], 8, axis=0)
    losses = model.training_losses(torch.from_numpy(graph.features), sampler, pairs, np.random.default_rng(0))
    assert losses["retrieval"].item() == pytest.approx(0.0, abs=1e-6)


def test_mae_remasks_queries_that_are_other_queries_neighbours(graph):
    """Eq. 4: the query users are re-masked before the decoder, also where one is another query's neighbour."""
    sampler = _RecordingSampler(graph.num_nodes, graph.edges, (4, 3))
    model = create_model("ssmtl", num_features=graph.num_features, **TINY, beta=0.0, gamma=1.0)
    seen = []
    decoder_forward = model.decoder.forward

    def recording(centre, neighbours, mask):
        seen.append(neighbours.detach())
        return decoder_forward(centre, neighbours, mask)

    model.decoder.forward = recording
    pairs = np.concatenate([graph.edges[:8], graph.edges[:8, ::-1]])  # friends among the queries
    model.training_losses(torch.from_numpy(graph.features), sampler, pairs, np.random.default_rng(0))
    nb = sampler.calls[2]
    query_slots = np.isin(nb.hop1, nb.nodes) & (nb.hop1_mask > 0)
    assert query_slots.any() and (~query_slots & (nb.hop1_mask > 0)).any()
    assert torch.all(seen[0][torch.from_numpy(query_slots)] == 0)
    assert torch.all(seen[0][torch.from_numpy(~query_slots & (nb.hop1_mask > 0))].abs().sum(-1) > 0)


def test_a_retrieval_graph_that_answers_otherwise_than_the_encoder_is_not_published(
    trained, tmp_path, monkeypatch
):
    """Nothing ran the retrieval package's golden file at export (nor does the retrieval server at load): a
    graph traced from other weights was published, its index embedded with it."""
    import copy

    import models.graph.export

    real_export_onnx = models.graph.export.export_onnx

    def export_other_weights(model: SSMTL, path: Path, example: dict[str, np.ndarray]) -> None:
        other = copy.deepcopy(model)
        with torch.no_grad():
            for parameter in other.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        real_export_onnx(other, path, example)

    monkeypatch.setattr(models.graph.export, "export_onnx", export_other_weights)
    with pytest.raises(PackageError, match="golden parity failed"):
        write_package(trained, tmp_path, "ssmtl", "1")
    assert not any((tmp_path / "ssmtl").iterdir())
