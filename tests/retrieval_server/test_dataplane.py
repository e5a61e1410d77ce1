"""Data plane, model repository and indexes without any network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.package import read_manifest, write_manifest
from retrieval_server.dataplane import RetrievalDataPlane, RetrieveQuery
from retrieval_server.errors import InvalidInput, ModelNotFound, ModelNotReady, PackageError
from retrieval_server.index import ExactIndex, HNSWIndex, QuantizedIndex, build_index
from retrieval_server.metrics import RetrievalMetrics
from retrieval_server.model_repository import ModelRepository
from tests.retrieval_server.conftest import graph_arrays


def make_plane(root, max_k: int = 50) -> RetrievalDataPlane:
    repository = ModelRepository(root)
    repository.load("ssmtl", "1", default=True)
    repository.load("ssmtl", "2")
    repository.load("baseline", "1")
    return RetrievalDataPlane(repository, RetrievalMetrics(), max_k=max_k)


def brute_force(embeddings: np.ndarray, user: int, k: int, exclude: set[int]) -> list[int]:
    scores = embeddings @ embeddings[user]
    order = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) != user and int(i) not in exclude]
    return order[:k]


async def test_known_user_matches_exact_search_and_excludes(repository_root):
    plane = make_plane(repository_root)
    embeddings = np.load(repository_root / "ssmtl" / "1" / "index" / "embeddings.npy")
    first = await plane.retrieve(RetrieveQuery(user_id="7", k=10))
    assert first.model == ("ssmtl", "1") and not first.embedded_on_the_fly
    assert first.candidate_ids.tolist() == brute_force(embeddings, 7, 10, set())
    assert np.all(np.diff(first.scores) <= 1e-7)
    excluded = {int(first.candidate_ids[0]), int(first.candidate_ids[3]), 123456789}
    second = await plane.retrieve(RetrieveQuery(user_id="7", k=10, exclude_ids=np.array(sorted(excluded))))
    assert 7 not in second.candidate_ids and not excluded & set(second.candidate_ids.tolist())
    assert second.candidate_ids.tolist() == brute_force(embeddings, 7, 10, excluded)


async def test_each_request_gets_the_version_it_names(repository_root):
    plane = make_plane(repository_root)
    results = {}
    for name, version in (("ssmtl", "1"), ("ssmtl", "2"), ("baseline", "1"), ("", "")):
        r = await plane.retrieve(RetrieveQuery(user_id="3", k=20, model_name=name, model_version=version))
        results[(name, version)] = r
        assert r.model == ((name, version) if name else ("ssmtl", "1"))
    assert results[("ssmtl", "1")].candidate_ids.tolist() != results[("ssmtl", "2")].candidate_ids.tolist()
    only_name = await plane.retrieve(RetrieveQuery(user_id="3", k=5, model_name="baseline"))
    assert only_name.model == ("baseline", "1")
    with pytest.raises(ModelNotFound, match="ssmtl:9"):
        await plane.retrieve(RetrieveQuery(user_id="3", k=5, model_name="ssmtl", model_version="9"))


async def test_unseen_user_is_embedded_from_features_and_neighbours(repository_root):
    plane = make_plane(repository_root)
    graph = graph_arrays(repository_root)
    indptr, indices, features = graph["indptr"], graph["indices"], graph["features"]
    degree = np.diff(indptr)
    embeddings = np.load(repository_root / "ssmtl" / "1" / "index" / "embeddings.npy")
    # a node whose whole 2-hop tree fits the fan-outs (8, 8): the sample is then the full neighbourhood
    node = next(u for u in range(len(degree)) if 0 < degree[u] <= 8 and np.all(degree[indices[indptr[u]:indptr[u + 1]]] <= 8))
    neighbours = graph["ids"][indices[indptr[node] : indptr[node + 1]]]
    query = RetrieveQuery(user_id="new-user", k=5, user_features=features[node], neighbor_ids=neighbours)
    result = await plane.retrieve(query)
    assert result.embedded_on_the_fly
    model = plane.repository.get("ssmtl", "1")
    vector = model.embed(features[node], indices[indptr[node] : indptr[node + 1]], seed=0)
    np.testing.assert_allclose(vector, embeddings[node], atol=1e-4)
    assert result.candidate_ids[0] == graph["ids"][node]  # the same person, indexed, is the nearest item
    assert result.scores[0] == pytest.approx(1.0, abs=1e-4)
    cold = await plane.retrieve(RetrieveQuery(user_id="cold", k=5, user_features=features[node]))
    assert len(cold.candidate_ids) == 5  # no neighbours at all: features alone


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (RetrieveQuery(user_id="1", k=0), "k"),
        (RetrieveQuery(user_id="1", k=51), "k"),
        (RetrieveQuery(user_id="", k=5), "user_id"),
        (RetrieveQuery(user_id="stranger", k=5), "user_features"),
        (RetrieveQuery(user_id="stranger", k=5, user_features=np.ones(3, np.float32)), "user_features"),
        (RetrieveQuery(user_id="stranger", k=5, user_features=np.full(16, np.nan, np.float32)), "user_features"),
        # finite, but the encoder overflows: its NaN vector found nothing, an empty answer with status OK
        (RetrieveQuery(user_id="stranger", k=5, user_features=np.full(16, 3e38, np.float32)),
         "user_features"),
        (RetrieveQuery(user_id="stranger", k=5, user_features=np.ones(16, np.float32),
                       neighbor_ids=np.array([1, 987654321])), "neighbor_ids"),
        # a version alone named no model: the default answered in its place
        (RetrieveQuery(user_id="1", k=5, model_version="2"), "model.name"),
    ],
)
async def test_bad_input_names_the_field(repository_root, query, field):
    plane = make_plane(repository_root)
    with pytest.raises(InvalidInput) as info:
        await plane.retrieve(query)
    assert info.value.field == field and str(info.value).startswith(f"{field}: ")


def test_k_larger_than_the_corpus_returns_everything_else(repository_root):
    index = ExactIndex(np.load(repository_root / "ssmtl" / "1" / "index" / "embeddings.npy"))
    found, scores = index.search(index.embeddings[0], 10_000, np.array([0, 1, 1]))
    assert len(found) == index.size - 2 and not {0, 1} & set(found.tolist())
    np.testing.assert_allclose(scores, index.embeddings[found] @ index.embeddings[0], atol=1e-5)
    assert np.all(np.diff(scores) <= 1e-6)


@pytest.mark.parametrize("ann", ["hnsw", "pq"])
def test_ann_agrees_with_exact_search_and_honours_exclusions(ann):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = ExactIndex(vectors)
    approx = HNSWIndex(vectors, m=16, ef_construction=100, ef_search=200) if ann == "hnsw" else QuantizedIndex(vectors)
    assert build_index(vectors, exact_max_items=10, ann=ann).kind == approx.kind != "exact"
    recalls = []
    for q in range(20):
        exclude = np.array([q, q + 1, q + 2])
        truth, _ = exact.search(vectors[q], 50, exclude)
        found, scores = approx.search(vectors[q], 50, exclude)
        assert not set(exclude.tolist()) & set(found.tolist()) and len(found) == 50
        recalls.append(len(set(found.tolist()) & set(truth.tolist())) / 50)
        np.testing.assert_allclose(scores, vectors[found] @ vectors[q], atol=1e-5)
    assert np.mean(recalls) > 0.9


def test_tied_scores_come_best_first_then_by_position_whatever_k() -> None:
    """faiss returned ties in an order that depends on k (top-3 [2, 1, 0], top-5 [4, 3, 2, 1, 0]): a smaller k
    was no prefix of a larger one for the same user."""
    vectors = np.zeros((40, 4), np.float32)
    vectors[:20, 0] = 1.0  # 20 items tied at score 1, then 20 tied at 0.6
    vectors[20:, :2] = (0.6, 0.8)
    exact, approx = ExactIndex(vectors), QuantizedIndex(vectors)
    for k in (3, 5, 19, 25, 40):
        found, scores = exact.search(vectors[0], k, np.array([7]))
        assert found.tolist() == [p for p in range(40) if p != 7][:k] and np.all(np.diff(scores) <= 0)
        found, scores = approx.search(vectors[0], k, np.array([7]))  # its candidate set may depend on k
        assert list(zip(-scores, found, strict=True)) == sorted(zip(-scores, found, strict=True))


@pytest.mark.parametrize("n", [1, 15])
def test_a_corpus_too_small_for_pq_is_searched_exactly(n: int) -> None:
    """4-bit PQ cannot train on under 16 items: with ``--exact-max-items 0`` their load raised in faiss."""
    vectors = np.eye(n, 16, dtype=np.float32)
    index = build_index(vectors, exact_max_items=0, ann="pq")
    assert index.kind == "exact"
    found, _ = index.search(vectors[0], 10, np.array([0]))
    assert len(found) == min(n - 1, 10) and 0 not in found.tolist()  # all tied at 0: any order


def _clustered(n: int, clusters: int, dim: int = 16, noise: float = 0.3) -> np.ndarray:
    """Unit vectors in tight clusters, as learned embeddings are (random ones are the easy case here)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("dim", [5, 33])
def test_pq_takes_an_odd_embedding_width(dim: int) -> None:
    """PQ{dim // 2} must divide the width: an odd one (embed_dim=33 with 3 heads) failed the load in faiss,
    with a traceback at start and on every poll after."""
    vectors = _clustered(300, 5, dim)
    index = build_index(vectors, exact_max_items=0, ann="pq")
    assert index.kind == "pq-refine"
    found, scores = index.search(vectors[0], 10, np.array([0, 1]))
    truth, _ = ExactIndex(vectors).search(vectors[0], 10, np.array([0, 1]))
    assert found.tolist() == truth.tolist()  # 300 items: all of them re-ranked exactly
    np.testing.assert_allclose(scores, vectors[found] @ vectors[0], atol=1e-5)


def test_pq_finds_the_top_10_in_clustered_vectors() -> None:
    """16 x (k + 1) re-ranked candidates held 43% of the exact top 10 here (PQ codes blur the differences
    inside a cluster), while the top 100 of the same users was exact: a smaller k got worse items."""
    vectors = _clustered(5000, 5, noise=0.2)
    exact, approx = ExactIndex(vectors), QuantizedIndex(vectors)
    recalls = []
    for q in range(50):
        truth, _ = exact.search(vectors[q], 10, np.array([q]))
        found, _ = approx.search(vectors[q], 10, np.array([q]))
        recalls.append(len(set(found.tolist()) & set(truth.tolist())) / 10)
    assert np.mean(recalls) >= 0.95


def test_hnsw_returns_k_items_whatever_k_and_the_exclusions() -> None:
    """The contract's k items (fewer only when fewer remain): faiss walked the graph with ef below k (every
    top 200 at ef 16 came back short), and with the 300 nearest excluded a top 20 could find fewer than 20."""
    vectors = _clustered(5000, 100)
    index, exact = HNSWIndex(vectors, ef_search=16), ExactIndex(vectors)
    for q in range(20):
        found, scores = index.search(vectors[q], 200, np.array([q]))
        assert len(found) == 200 and q not in found.tolist() and np.all(np.diff(scores) <= 0)
        nearest, _ = exact.search(vectors[q], 300, np.array([], np.int64))
        found, _ = index.search(vectors[q], 20, nearest)
        assert len(found) == 20 and not set(nearest.tolist()) & set(found.tolist())
    found, _ = index.search(vectors[0], 200, np.arange(4990))  # fewer remain than asked for: all of them
    assert sorted(found.tolist()) == list(range(4990, 5000))


def test_repository_verifies_checksums_and_kind(repository_root):
    repository = ModelRepository(repository_root)
    with pytest.raises(ModelNotReady):
        repository.get()
    embeddings = repository_root / "ssmtl" / "1" / "index" / "embeddings.npy"
    embeddings.write_bytes(embeddings.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PackageError, match="embeddings.npy: sha256"):
        repository.load("ssmtl", "1")
    manifest_path = repository_root / "ssmtl" / "2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "kind": "ranking"}))
    with pytest.raises(PackageError, match="kind"):
        repository.load("ssmtl", "2")
    manifest_path.write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(PackageError, match="format_version 2, this server reads 1"):
        repository.load("ssmtl", "2")
    with pytest.raises(PackageError, match="not found"):
        repository.load("ssmtl", "404")


def test_repository_refuses_fanouts_the_encoder_cannot_sample(repository_root):
    """The store samples two hops; a manifest naming another count fails at load, not on the first request."""
    manifest_path = repository_root / "ssmtl" / "2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    training = {**manifest["training_config"], "fanouts": [5, 3, 2]}
    manifest_path.write_text(json.dumps({**manifest, "training_config": training}))
    with pytest.raises(PackageError, match=r"fanouts must give 2 sizes \(one per hop\), got \[5, 3, 2\]"):
        ModelRepository(repository_root).load("ssmtl", "2")


def _rewrite_index(package: Path, change) -> None:
    """Rewrite ``index/`` through ``change(graph, embeddings)`` and re-seal the checksums, as a faulty index
    job would: the sha256 check cannot catch it."""
    graph = graph_arrays(package.parent.parent, package.parent.name, package.name)
    graph, embeddings = change(graph, np.load(package / "index" / "embeddings.npy"))
    np.savez(package / "index" / "graph.npz", **graph)
    np.save(package / "index" / "embeddings.npy", embeddings)
    write_manifest(package, read_manifest(package))


def _narrow_embeddings(graph: dict, embeddings: np.ndarray) -> tuple[dict, np.ndarray]:
    return graph, embeddings[:, :4].copy()


def _narrow_features(graph: dict, embeddings: np.ndarray) -> tuple[dict, np.ndarray]:
    return {**graph, "features": graph["features"][:, :10].copy()}, embeddings


def _nan_row(graph: dict, embeddings: np.ndarray) -> tuple[dict, np.ndarray]:
    embeddings[10] = np.nan
    return graph, embeddings


def _duplicate_id(graph: dict, embeddings: np.ndarray) -> tuple[dict, np.ndarray]:
    return {**graph, "ids": np.where(graph["ids"] == 5, 4, graph["ids"])}, embeddings


def _no_features(graph: dict, embeddings: np.ndarray) -> tuple[dict, np.ndarray]:
    return {k: v for k, v in graph.items() if k != "features"}, embeddings


def _no_nodes(graph: dict, embeddings: np.ndarray) -> tuple[dict, np.ndarray]:
    empty = {k: graph[k][:0] for k in ("ids", "indices", "features")}
    return {**empty, "indptr": np.zeros(1, np.int64)}, embeddings[:0]


def _neighbour_outside(graph: dict, embeddings: np.ndarray) -> tuple[dict, np.ndarray]:
    return {**graph, "indices": np.where(graph["indices"] == 3, 999, graph["indices"])}, embeddings


INDEX_FAULTS = {
    "encoder wider than the index": (
        _narrow_embeddings,
        r"model.onnx: embedding output is 8 wide, \S*/embeddings.npy is 4 wide",
    ),
    "stored features narrower than the encoder's": (
        _narrow_features,
        r"model.onnx: node_features takes 16 features, \S*/graph.npz holds 10",
    ),
    "a NaN embedding": (_nan_row, r"embeddings.npy: 1 rows are not finite \(the first: node id 10\)"),
    "a duplicate id": (_duplicate_id, r"graph.npz: node id 4 appears 2 times"),
    "no features": (_no_features, r"graph.npz: no features array"),
    "no nodes": (_no_nodes, r"graph.npz: ids must be a non-empty"),
    "a neighbour outside the graph": (_neighbour_outside, r"graph.npz: indices must be positions in 0..199"),
}


@pytest.mark.parametrize("fault", INDEX_FAULTS)
def test_an_index_that_would_fail_requests_is_refused_at_load(repository_root: Path, fault: str) -> None:
    """Each loaded before: the first unseen user got INTERNAL (a faiss assertion, an ONNX shape error, an
    IndexError), a NaN row's user got no candidates, a duplicate id came back twice; "no features" raised a
    KeyError, which ended the server's start in a traceback."""
    change, message = INDEX_FAULTS[fault]
    _rewrite_index(repository_root / "ssmtl" / "1", change)
    with pytest.raises(PackageError, match=message):
        ModelRepository(repository_root).load("ssmtl", "1")


async def test_a_graph_without_edges_serves(repository_root: Path) -> None:
    """A catalogue with no edges passes the graph checks, but sampling indexed the empty edge array: its load
    ended in an IndexError (a traceback at start, on every poll after), as did any unseen user."""

    def no_edges(graph: dict, embeddings: np.ndarray) -> tuple[dict, np.ndarray]:
        edges = {"indptr": np.zeros_like(graph["indptr"]), "indices": graph["indices"][:0]}
        return {**graph, **edges}, embeddings

    _rewrite_index(repository_root / "ssmtl" / "1", no_edges)
    repository = ModelRepository(repository_root)
    repository.load("ssmtl", "1")
    plane = RetrievalDataPlane(repository, RetrievalMetrics(), max_k=50)
    known = await plane.retrieve(RetrieveQuery(user_id="7", k=10))
    features = graph_arrays(repository_root)["features"][7]
    unseen = await plane.retrieve(RetrieveQuery(user_id="new-user", k=10, user_features=features))
    assert len(known.candidate_ids) == len(unseen.candidate_ids) == 10 and unseen.embedded_on_the_fly


MANIFEST_FAULTS = {
    "files not an object": ({"files": []}, r"manifest.json: files must be an object \(path -> sha256\)"),
    "a negative fan-out": ({"fanouts": [-1, 8]}, r"manifest.json: training_config.fanouts must be positive"),
    "a fan-out as text": ({"fanouts": "88"}, r"manifest.json: training_config.fanouts must list integers"),
    "a fractional fan-out": ({"fanouts": [8.5, 8]}, r"fanouts must list integers, got \[8.5, 8\]"),
    # the encoder was exported for (8, 8): the test sample of (100000, 100000) asked numpy for 74.5 GiB
    "fan-outs the encoder was not exported for": (
        {"fanouts": [100_000, 100_000]},
        r"model.onnx: hop1_features takes 8 neighbours, training_config.fanouts \[100000, 100000\] of ",
    ),
}


@pytest.mark.parametrize("fault", MANIFEST_FAULTS)
def test_a_malformed_manifest_is_a_package_error(repository_root: Path, fault: str) -> None:
    """A TypeError or a numpy ValueError came out of the load instead (not naming the file; a reload's escaped
    ``refresh``), or the package loaded with other fan-outs than written ("88" read as [8, 8], 8.5 as 8)."""
    change, message = MANIFEST_FAULTS[fault]
    manifest_path = repository_root / "ssmtl" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if "fanouts" in change:
        change = {"training_config": {**manifest["training_config"], **change}}
    manifest_path.write_text(json.dumps({**manifest, **change}))
    with pytest.raises(PackageError, match=message):
        ModelRepository(repository_root).load("ssmtl", "1")


def test_a_reload_of_a_faulty_index_keeps_the_old_version_serving(repository_root: Path) -> None:
    """An index job that rewrote ssmtl/1 with vectors narrower than its encoder's: swapped in before."""
    plane = make_plane(repository_root)
    before = plane.repository.get("ssmtl", "1")
    _rewrite_index(repository_root / "ssmtl" / "1", _narrow_embeddings)
    assert plane.repository.refresh() == []
    assert plane.repository.get("ssmtl", "1") is before


def test_a_graph_onnxruntime_cannot_load_is_a_failed_reload(repository_root: Path) -> None:
    """A model.onnx that matches its sha256 but is no graph raised onnxruntime's own error out of ``refresh``:
    the versions after it were not reloaded, and a start ended in a traceback."""
    plane = make_plane(repository_root)
    before = plane.repository.get("ssmtl", "1")
    for version in ("1", "2"):
        package = repository_root / "ssmtl" / version
        if version == "1":
            (package / "model.onnx").write_bytes(b"not an onnx graph")
        manifest = read_manifest(package)
        manifest.created_at = "2030-01-01T00:00:00+00:00"
        write_manifest(package, manifest)
    assert plane.repository.refresh() == [("ssmtl", "2")]
    assert plane.repository.get("ssmtl", "1") is before
    with pytest.raises(PackageError, match="model.onnx: onnxruntime cannot load it: "):
        ModelRepository(repository_root).load("ssmtl", "1")


async def test_refresh_swaps_in_a_rewritten_package(repository_root):
    plane = make_plane(repository_root)
    before = plane.repository.get("ssmtl", "1")
    assert plane.repository.refresh() == []
    package = repository_root / "ssmtl" / "1"
    manifest = json.loads((package / "manifest.json").read_text())
    (package / "manifest.json").write_text(json.dumps({**manifest, "created_at": "2030-01-01T00:00:00+00:00"}))
    assert plane.repository.refresh() == [("ssmtl", "1")]
    assert plane.repository.get("ssmtl", "1") is not before
    assert plane.repository.default == ("ssmtl", "1")


def test_refresh_keeps_serving_through_a_half_written_manifest(
    repository_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest caught half-written (an editor, a copy) is a failed reload, logged once, not an exception
    out of ``refresh`` (it killed the server's poller: no later republish was picked up)."""
    repository = ModelRepository(repository_root)
    before = repository.load("ssmtl", "1", default=True)
    manifest_path = repository_root / "ssmtl" / "1" / "manifest.json"
    text = manifest_path.read_text()
    manifest_path.write_text(text[: len(text) // 2])
    assert repository.refresh() == [] and repository.refresh() == []
    assert repository.get("ssmtl", "1") is before
    failures = [r.getMessage() for r in caplog.records if "reload of ssmtl:1 failed" in r.getMessage()]
    assert len(failures) == 1 and f"{manifest_path}: unreadable" in failures[0]
    manifest_path.write_text(json.dumps({**json.loads(text), "created_at": "2030-01-01T00:00:00+00:00"}))
    assert repository.refresh() == [("ssmtl", "1")]
    assert repository.get("ssmtl", "1") is not before


def test_serving_never_imports_torch():
    code = "import sys, retrieval_server.server, retrieval_server.__main__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


EXPERIMENTS = """
version: 1
defaults:
  retrieval: {model_name: baseline, model_version: "1"}
  ranking: {model_name: mmoe, model_version: "1", task_weights: {click: 1.0}}
experiments:
  - key: retrieval-ssmtl
    stage: retrieval
    status: running
    layer: {name: retrieval, range: [0.0, 0.5]}
    coverage: 1.0
    variations:
      - {key: control, weight: 0.5, payload: {model_name: baseline, model_version: "1"}}
      - {key: treatment, weight: 0.5, payload: {model_name: ssmtl, model_version: "2"}}
"""


async def test_router_picks_the_retrieval_variant_when_the_request_names_none(repository_root, tmp_path):
    from experiment_router import Router

    (tmp_path / "experiments.yaml").write_text(EXPERIMENTS)
    router = Router.from_file(tmp_path / "experiments.yaml")

    class Source:
        current = router

    plane = make_plane(repository_root)
    plane._router_source = Source()
    served = {}
    for user in range(60):
        result = await plane.retrieve(RetrieveQuery(user_id=str(user), k=3))
        expected = [a for a in router.assign(str(user)) if a.stage == "retrieval" and a.in_experiment]
        if expected:
            assert [(a.experiment_key, a.variation_id) for a in result.assignments] == [
                (expected[0].experiment_key, expected[0].variation_id)]
            assert result.model == (expected[0].payload.model_name, expected[0].payload.model_version)
        else:  # outside the layer range: the router's retrieval default, no assignment
            assert result.assignments == () and result.model == ("baseline", "1")
        served[result.model] = served.get(result.model, 0) + 1
    assert set(served) == {("baseline", "1"), ("ssmtl", "2")}
    named = await plane.retrieve(RetrieveQuery(user_id="1", k=3, model_name="ssmtl", model_version="1"))
    assert named.model == ("ssmtl", "1") and named.assignments == ()  # a named model bypasses the router


async def test_only_the_serving_retrieval_experiment_is_reported(repository_root):
    """A router that puts the user in two retrieval experiments (as a stand-in: configs refuse it): the first
    serves, and it alone is reported, as the ranker reports the ranking stage's; both were reported before."""
    from experiment_router import Assignment, Payload

    def inside(key: str, version: str) -> Assignment:
        payload = Payload("ssmtl", version, {})
        return Assignment(key, "treatment", 1, "retrieval", "retrieval", True, True, payload, "in variant")

    class Source:
        class current:  # noqa: N801 - stands for the router object
            @staticmethod
            def assign(user_id: str, attributes: dict) -> list[Assignment]:
                return [inside("first", "2"), inside("second", "1")]

    plane = make_plane(repository_root)
    plane._router_source = Source()
    result = await plane.retrieve(RetrieveQuery(user_id="1", k=3))
    assert result.model == ("ssmtl", "2")
    assert [(a.experiment_key, a.variation_id) for a in result.assignments] == [("first", 1)]


async def test_exclude_neighbours_drops_existing_friends(repository_root):
    """Friend suggestion mode: a user's graph neighbours (indexed, or sent by an unseen user) are never returned."""
    graph = graph_arrays(repository_root)
    indptr, indices, ids = graph["indptr"], graph["indices"], graph["ids"]
    embeddings = np.load(repository_root / "ssmtl" / "1" / "index" / "embeddings.npy")
    user = int(np.argmax(np.diff(indptr)))
    friends = {int(ids[p]) for p in indices[indptr[user] : indptr[user + 1]]}
    plain = make_plane(repository_root)
    suggesting = RetrievalDataPlane(plain.repository, RetrievalMetrics(), max_k=50, exclude_neighbours=True)
    query = RetrieveQuery(user_id=str(ids[user]), k=40)
    assert friends & set((await plain.retrieve(query)).candidate_ids.tolist())  # neighbours do rank high
    result = await suggesting.retrieve(query)
    assert not friends & set(result.candidate_ids.tolist())
    positions = {int(p) for p in indices[indptr[user] : indptr[user + 1]]}
    expected = brute_force(embeddings, user, 40, positions)  # same scores; ties may come in another order
    np.testing.assert_allclose(result.scores, embeddings[expected] @ embeddings[user], atol=1e-5)
    unseen = RetrieveQuery(user_id="newcomer", k=40, user_features=graph["features"][user],
                           neighbor_ids=np.array(sorted(friends)))
    assert not friends & set((await suggesting.retrieve(unseen)).candidate_ids.tolist())
