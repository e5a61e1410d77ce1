"""Friendship graphs with node features: SNAP ego-Facebook (from a path, or downloaded and verified) and a
synthetic community graph for tests.

ego-Facebook (McAuley & Leskovec, NIPS 2012; https://snap.stanford.edu/data/ego-Facebook.html) is 4,039 users
and 88,234 undirected friendships. Profile features are anonymised binary indicators, stored per ego network with
local column numbers whose ``.featnames`` map them to global feature ids; we assemble one global binary matrix
(a user seen in several ego networks gets the union of its indicators).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import DataError

logger = logging.getLogger(__name__)

SNAP_EDGES_URL = "https://snap.stanford.edu/data/facebook_combined.txt.gz"
SNAP_EGO_URL = "https://snap.stanford.edu/data/facebook.tar.gz"
EGO_IDS = (0, 107, 348, 414, 686, 698, 1684, 1912, 3437, 3980)

# sha256 of the uncompressed files we read (the same bytes as in SNAP's archives).
SHA256 = {
    "facebook_combined.txt": "f41c026ed8af3cc3359f1ca5573d0605fb09ae0eefa34544b820fd8c6e2ef296",
    "0.feat": "b907dd7360e71020a95d6e7bb0a14cdc02053acb7cbe7d4936927b71ea5b6a97",
    "107.feat": "bb9f271516cf3c140490b9e163a9da9f14ea5d99fb0d8cfed1024ec0986e4dd7",
    "1684.feat": "9a03c495a11986a369ea9b5d2b674c7138339e0aae4a3d5ad13009b14b1628a8",
    "1912.feat": "b73b6cf9766c49c8b2d2fbef13a1a5c47e594e8fb18592369f329ffb5511de3e",
    "3437.feat": "5aad021ddc7673af2dc76c61d2441fa839ca7df46e3874eeae6e4d26e9017458",
    "348.feat": "28564512ab998bcb6f737a36dfcf78242684df4ac6580967187da3710b63054e",
    "3980.feat": "9743f0a61ba6386d3f9ee7943f9b071f1900a069d068297bd40c2616aa206687",
    "414.feat": "1eba61100f1564a1e69f24c0aee25ee1530269aad443e1639f0b4a96a06d2ad3",
    "686.feat": "03de9b3372cfba3004903e5e7c7819d19d05dc23f6d6f5557580cac8f9d70f5f",
    "698.feat": "3153ae798b8ea72e37a413ad62c06a5fb92f2834b7bf54ea57efc4c1fbbb3453",
    "0.egofeat": "19ced29b784c17df0579aa581e98ecd1c0581dc06be3d367ec4e91ba9f272521",
    "107.egofeat": "bf5a732fd33175e7ee0dea68ad03bd0b694caec610af11fcdceac3a0b1b97bc1",
    "1684.egofeat": "8bf36cd2b1dc55a5ed4f74fb274aa8dcab8e340ab35133bddb543ccc7957cf61",
    "1912.egofeat": "ff65c80fad06b57b8d6d212550d21db624cd9e74b1580e6f520b14508c0644b4",
    "3437.egofeat": "8afd00327fe412b39beebe74d8d749d828db04c23988046971c303721eaf9e78",
    "348.egofeat": "0251abeed667687a914f6b9b36d21cd73cc40248c9ab9e6152f487935731c274",
    "3980.egofeat": "7fbc72af863c9058b7f8485487a87705cea8d088e998fbafba65c8ad97a8bd52",
    "414.egofeat": "476a9c7ecbbe6b9455ff0949546a1cc8fe5f8e3478c0b4af8e1d66e9576aad23",
    "686.egofeat": "0eacee85b4bd0589da40cb67b9f00f5cdd5737653f82bb0a055bcfee2f9b9c45",
    "698.egofeat": "a8d227226abaef149837f7380437f98035a4a803ea4da56626a3d0ecc0db7722",
    "0.featnames": "5afabbba309b4a57a68e88485dbc6408652b3c5695010ed0cab81856839fa7b4",
    "107.featnames": "f66814da7081ab8c2f6301ad1b180d17f40c6ad576d103cc799001706ff0ec60",
    "1684.featnames": "3372d1d0c84737c28f215ad58a8d2ca9c3b9eecc0b6e7ff72cdc8370488bbef6",
    "1912.featnames": "988dd41c7835ca00d61ee6995af78a5831a3d5f0ce04b3114c1e18a480d2e5f3",
    "3437.featnames": "2c7314ae00b4ee220fd71686539d255443761126a75c4908fc705e42a2595c0d",
    "348.featnames": "18ef4bcf895dd1a8d7a443a6f3a971108fe3d0fd89328f4fd3fa846c1ad9b76c",
    "3980.featnames": "457a6a734ae4ccee86377acf62ae603ce85af58915eb05459b3bd781b44473b7",
    "414.featnames": "5536980da86d144e2a6b0150b0a88900f4419db679bec6b1b055c584fb67b687",
    "686.featnames": "670794be83fd07a4169d3b25b7e964c2b750f4a0d7b9a747ed08e651af0cb49c",
    "698.featnames": "cae0ce911813bd51cf49d3bcb5cc6f1fd7e644b4dc567cb3c2aca1b16cec69ee",
}


class GraphDataError(DataError):
    """A graph data set is missing, malformed or fails its checksum; the message names the file."""


@dataclass(frozen=True)
class Graph:
    """An undirected graph: ``edges`` int64 [E, 2] with u < v and no duplicates, ``features`` float32 [N, F].

    Node ``i`` has the external id ``node_ids[i]`` (the id clients use in requests).
    """

    edges: np.ndarray
    features: np.ndarray
    node_ids: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])


def canonical_edges(edges: np.ndarray) -> np.ndarray:
    """Undirected edges as sorted unique (min, max) rows without self-loops."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    edges = np.sort(edges, axis=1)
    edges = edges[edges[:, 0] != edges[:, 1]]
    return np.unique(edges, axis=0)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_checked(path: Path, verify: bool) -> bytes:
    if not path.is_file():
        raise GraphDataError(
            f"{path}: file not found (download with models.graph.datasets.download_ego_facebook)"
        )
    data = path.read_bytes()
    expected = SHA256.get(path.name)
    if verify and expected is not None and _sha256(data) != expected:
        raise GraphDataError(f"{path}: sha256 {_sha256(data)} does not match the official file ({expected})")
    return data


def load_ego_facebook(root: str | Path, *, verify: bool = True) -> Graph:
    """Load ego-Facebook from ``root`` holding ``facebook_combined.txt`` and ``ego/<id>.{feat,egofeat,featnames}``.

    Args:
        root: the data folder (as in shared/data/ego-facebook or as written by ``download_ego_facebook``).
        verify: check every file against the official sha256 before parsing.

    Raises:
        GraphDataError: a file is missing or does not match its checksum.
    """
    root = Path(root)
    text = _read_checked(root / "facebook_combined.txt", verify).decode()
    edges = canonical_edges(np.loadtxt(io.StringIO(text), dtype=np.int64))
    num_nodes = int(edges.max()) + 1
    per_ego: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for ego in EGO_IDS:
        names = _read_checked(root / "ego" / f"{ego}.featnames", verify).decode().splitlines()
        global_ids = np.array(
            [int(line.rsplit(" ", 1)[-1]) for line in names if line.strip()], dtype=np.int64
        )
        feat = np.loadtxt(
            io.BytesIO(_read_checked(root / "ego" / f"{ego}.feat", verify)), dtype=np.int64, ndmin=2
        )
        egofeat = np.loadtxt(
            io.BytesIO(_read_checked(root / "ego" / f"{ego}.egofeat", verify)), dtype=np.int64, ndmin=2
        )
        nodes = np.concatenate([feat[:, 0], [ego]])
        per_ego.append((nodes, np.concatenate([feat[:, 1:], egofeat], axis=0), global_ids))
    width = max(int(global_ids.max()) + 1 for _, _, global_ids in per_ego)
    features = np.zeros((num_nodes, width), dtype=np.float32)
    for nodes, values, global_ids in per_ego:
        rows, cols = np.nonzero(values)
        features[nodes[rows], global_ids[cols]] = 1.0
    logger.info("ego-Facebook: %d nodes, %d edges, %d features", num_nodes, len(edges), width)
    return Graph(edges=edges, features=features, node_ids=np.arange(num_nodes, dtype=np.int64))


def download_ego_facebook(dest: str | Path, *, timeout_s: float = 60.0) -> Path:
    """Download ego-Facebook from SNAP into ``dest`` (the layout ``load_ego_facebook`` reads), verifying sha256.

    Nothing is written unless every file matches its official checksum.
    """
    dest = Path(dest)
    files: dict[str, bytes] = {}
    logger.info("downloading %s", SNAP_EDGES_URL)
    with urllib.request.urlopen(SNAP_EDGES_URL, timeout=timeout_s) as response:  # noqa: S310 (fixed https URL)
        files["facebook_combined.txt"] = gzip.decompress(response.read())
    logger.info("downloading %s", SNAP_EGO_URL)
    with urllib.request.urlopen(SNAP_EGO_URL, timeout=timeout_s) as response:  # noqa: S310
        archive = tarfile.open(fileobj=io.BytesIO(response.read()), mode="r:gz")
    for member in archive.getmembers():
        name = Path(member.name).name
        if name in SHA256 and member.isfile():
            handle = archive.extractfile(member)
            if handle is not None:
                files[f"ego/{name}"] = handle.read()
    write_verified(dest, files)
    return dest


def write_verified(dest: Path, files: dict[str, bytes]) -> None:
    """Check ``files`` (relative path -> bytes) against ``SHA256`` and write them; write nothing on a mismatch."""
    missing = sorted(set(SHA256) - {Path(p).name for p in files})
    if missing:
        raise GraphDataError(f"download incomplete: missing {', '.join(missing)}")
    for rel, data in files.items():
        if _sha256(data) != SHA256[Path(rel).name]:
            raise GraphDataError(
                f"{rel}: downloaded sha256 {_sha256(data)} != official {SHA256[Path(rel).name]}"
            )
    for rel, data in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def synthetic_graph(
    num_nodes: int = 300,
    num_features: int = 32,
    num_communities: int = 6,
    mean_degree: float = 8.0,
    p_within: float = 0.8,
    signal_per_community: int = 2,
    noise: float = 0.3,
    seed: int = 0,
) -> Graph:
    """A community graph whose binary features depend on the community, so retrieval is learnable.

    Nodes get a community and a heavy-tailed activity; an edge picks two endpoints proportionally to activity,
    inside one community with probability ``p_within``. Each community switches on its own small block of
    ``signal_per_community`` features; the remaining columns are Bernoulli(``noise``) distractors, so an
    untrained encoder (which mixes all columns) retrieves poorly and a trained one must learn which columns matter.
    """
    rng = np.random.default_rng(seed)
    community = rng.integers(0, num_communities, size=num_nodes)
    activity = rng.pareto(2.5, size=num_nodes) + 1.0
    num_edges = int(num_nodes * mean_degree / 2)
    u = rng.choice(num_nodes, size=num_edges * 2, p=activity / activity.sum())
    v = np.empty_like(u)
    within = rng.random(len(u)) < p_within
    members = [np.flatnonzero(community == c) for c in range(num_communities)]
    for c in range(num_communities):
        pick = within & (community[u] == c)
        if members[c].size:
            weights = activity[members[c]] / activity[members[c]].sum()
            v[pick] = rng.choice(members[c], size=int(pick.sum()), p=weights)
    v[~within] = rng.integers(0, num_nodes, size=int((~within).sum()))
    edges = canonical_edges(np.stack([u, v], axis=1))[:num_edges]
    block = max(1, min(signal_per_community, num_features // num_communities))
    probs = np.full((num_nodes, num_features), noise)
    probs[:, : num_communities * block] = 0.02
    for c in range(num_communities):
        probs[community == c, c * block : (c + 1) * block] = 0.8
    features = (rng.random((num_nodes, num_features)) < probs).astype(np.float32)
    return Graph(edges=edges, features=features, node_ids=np.arange(num_nodes, dtype=np.int64))
