"""Data loaders (MovieLens, Census-Income KDD, Ali-CCP/AliExpress samples) and the synthetic worlds.

``load_dataset(kind, path, seed)`` is what the CLI calls; each loader returns train/val/test ``Splits``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from models.data.alibaba import load_ali_ccp, load_aliexpress
from models.data.census import load_census
from models.data.dataset import Splits, TabularData
from models.data.movielens import load_movielens
from models.data.multiflow import MultiFlowConfig, MultiFlowWorld
from models.data.synthetic import SyntheticConfig, SyntheticWorld
from models.errors import DataError


def _synthetic(path: Path | str | None, seed: int, embedding_dim: int) -> Splits:
    """``path`` is ignored; 20,000 impressions of the default world (fixed world, ``seed`` picks the rows)."""
    return SyntheticWorld(SyntheticConfig()).sample(20_000, seed, embedding_dim).split((0.8, 0.1, 0.1), seed)


def _multiflow(path: Path | str | None, seed: int, embedding_dim: int) -> Splits:
    """``path`` is ignored; 150,000 impressions of the default multi-flow world (``seed`` picks the rows)."""
    world = MultiFlowWorld(MultiFlowConfig())
    return world.sample(150_000, seed, embedding_dim).split((0.8, 0.1, 0.1), seed)


LOADERS: dict[str, Callable[..., Splits]] = {
    "movielens": lambda path, seed, embedding_dim: load_movielens(path, seed, embedding_dim),
    "census": lambda path, seed, embedding_dim: load_census(path, seed, embedding_dim),
    "ali-ccp": lambda path, seed, embedding_dim: load_ali_ccp(path, embedding_dim),
    "aliexpress": lambda path, seed, embedding_dim: load_aliexpress(path, embedding_dim, seed),
    "synthetic": _synthetic,
    "multiflow": _multiflow,
}


def load_dataset(kind: str, path: Path | str | None, seed: int = 0, embedding_dim: int = 8) -> Splits:
    """Load one of ``LOADERS`` by name; errors list the known kinds."""
    try:
        loader = LOADERS[kind]
    except KeyError:
        raise DataError(f"unknown dataset {kind!r}; known: {', '.join(sorted(LOADERS))}") from None
    if path is None and kind not in ("synthetic", "multiflow"):
        raise DataError(f"dataset {kind!r} needs --data PATH")
    return loader(path, seed, embedding_dim)


__all__ = [
    "LOADERS",
    "DataError",
    "MultiFlowConfig",
    "MultiFlowWorld",
    "Splits",
    "SyntheticConfig",
    "SyntheticWorld",
    "TabularData",
    "load_dataset",
]
