"""A small data set in ego-Facebook's file layout, written by the tests (the real files are not redistributed)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from models.graph.datasets import EGO_IDS

FEATURES_PER_EGO = 6


def write_ego_facebook(root: Path, members_per_ego: int = 40, seed: int = 0) -> Path:
    """Ten ego networks (egos at the official ids, so ~4k mostly isolated nodes): each ego is friends with its
    members, members befriend each other with probability 0.3, and each network's profile bits lean its own way.
    """
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(np.arange(max(EGO_IDS) + 1), EGO_IDS)
    (root / "ego").mkdir(parents=True)
    edges = []
    for index, ego in enumerate(EGO_IDS):
        members = rng.choice(others, members_per_ego, replace=False)
        edges += [(ego, int(m)) for m in members]
        pairs = np.triu(rng.random((members_per_ego, members_per_ego)) < 0.3, k=1)
        edges += [(int(members[i]), int(members[j])) for i, j in zip(*np.nonzero(pairs), strict=True)]
        lean = rng.random(FEATURES_PER_EGO)
        bits = (rng.random((members_per_ego + 1, FEATURES_PER_EGO)) < lean).astype(int)
        rows = [" ".join(map(str, [int(m), *b])) for m, b in zip(members, bits[:-1], strict=True)]
        (root / "ego" / f"{ego}.feat").write_text("\n".join(rows) + "\n")
        (root / "ego" / f"{ego}.egofeat").write_text(" ".join(map(str, bits[-1])) + "\n")
        names = [f"{i} feature;anonymized feature {index * FEATURES_PER_EGO + i}" for i in range(FEATURES_PER_EGO)]
        (root / "ego" / f"{ego}.featnames").write_text("\n".join(names) + "\n")
    (root / "facebook_combined.txt").write_text("\n".join(f"{u} {v}" for u, v in edges) + "\n")
    return root


@pytest.fixture(scope="session")
def ego_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ego_facebook(tmp_path_factory.mktemp("data") / "ego-facebook")


@pytest.fixture
def process_state_restored() -> Iterator[None]:
    """``deploy.demo``'s ``main`` sets torch to one thread and SIGTERM and SIGINT to raise its own exceptions:
    not for the rest of the suite."""
    import torch

    threads = torch.get_num_threads()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    torch.set_num_threads(threads)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
