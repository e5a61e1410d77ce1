"""Training and offline evaluation of graph retrieval models (SSMTL and its retrieval-only baseline)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from models.graph.datasets import Graph, load_ego_facebook, synthetic_graph
from models.graph.metrics import per_user_metrics, summarise
from models.graph.sampling import NeighbourSampler
from models.graph.split import EdgeSplit, split_edges
from models.registry import create_model
from models.ssmtl import SSMTL

logger = logging.getLogger(__name__)

INDEX_SAMPLING_SEED = (
    0  # neighbourhoods used to embed the index are sampled with this seed (reproducible index)
)


class TrainConfig(BaseModel):
    """A training run; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["ego-facebook", "synthetic"] = "ego-facebook"
    data_path: str = "../shared/data/ego-facebook"
    seed: int = 0
    steps: int = 200
    batch_size: int = Field(256, ge=2)
    lr: float = 3e-3
    weight_decay: float = 0.0
    eval_every: int = Field(50, ge=1)
    val_frac: float = 0.05
    test_frac: float = 0.10
    model: dict[str, Any] = Field(
        default_factory=dict, description="SSMTLConfig overrides (alpha, beta, gamma, ...)"
    )


@dataclass
class TrainResult:
    """A trained model with everything needed to evaluate, export and index it."""

    model: SSMTL
    graph: Graph
    split: EdgeSplit
    sampler: NeighbourSampler
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)


def load_graph(config: TrainConfig) -> Graph:
    """The configured data set (the synthetic one needs no files)."""
    if config.dataset == "synthetic":
        return synthetic_graph(seed=config.seed)
    return load_ego_facebook(config.data_path)


@torch.no_grad()
def embed_all(
    model: SSMTL, features: torch.Tensor, sampler: NeighbourSampler, chunk: int = 1024
) -> np.ndarray:
    """L2-normalised embeddings of every node, neighbourhoods sampled with ``INDEX_SAMPLING_SEED``."""
    was_training = model.training
    model.eval()
    everyone = sampler.sample(
        np.arange(sampler.num_nodes, dtype=np.int64), np.random.default_rng(INDEX_SAMPLING_SEED)
    )
    parts = [
        model.embed_sampled(everyone.rows(s, s + chunk), features) for s in range(0, sampler.num_nodes, chunk)
    ]
    model.train(was_training)
    return torch.cat(parts).numpy()


def evaluate(result: TrainResult, part: Literal["val", "test"] = "test") -> dict[str, dict[str, float]]:
    """Metrics on held-out ``part`` edges, overall and by training degree."""
    embeddings = embed_all(result.model, torch.from_numpy(result.graph.features), result.sampler)
    known = result.split.train if part == "val" else np.concatenate([result.split.train, result.split.val])
    heldout = result.split.val if part == "val" else result.split.test
    per_user = per_user_metrics(embeddings, known, heldout)
    return summarise(per_user, result.sampler.degree())


def train(config: TrainConfig, graph: Graph | None = None, progress: bool = True) -> TrainResult:
    """Train on the training edges, keeping the checkpoint with the best validation Recall@50."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    graph = graph if graph is not None else load_graph(config)
    split = split_edges(graph.edges, config.val_frac, config.test_frac, seed=config.seed)
    model = create_model("ssmtl", num_features=graph.num_features, **config.model)
    if not isinstance(model, SSMTL):
        raise TypeError("the ssmtl registry entry must build an SSMTL model")
    sampler = NeighbourSampler(graph.num_nodes, split.train, model.config.fanouts)
    result = TrainResult(model=model, graph=graph, split=split, sampler=sampler, config=config)
    features = torch.from_numpy(graph.features)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_score, best_state = -1.0, copy.deepcopy(model.state_dict())
    model.train()
    bar = tqdm(
        range(1, config.steps + 1), desc=f"train seed={config.seed}", disable=not progress, leave=False
    )
    for step in bar:
        pairs = split.train[rng.integers(0, len(split.train), config.batch_size)]
        flip = rng.random(len(pairs)) < 0.5
        pairs = np.where(flip[:, None], pairs[:, ::-1], pairs)
        losses = model.training_losses(features, sampler, pairs, rng)
        optimiser.zero_grad()
        losses["total"].backward()
        optimiser.step()
        bar.set_postfix(loss=f"{losses['total'].item():.3f}")
        if step % config.eval_every == 0 or step == config.steps:
            val = evaluate(result, "val")["overall"]["recall@50"]
            result.history.append(
                {"step": step, **{k: v.item() for k, v in losses.items()}, "val_recall@50": val}
            )
            logger.info("step %d losses %s val recall@50 %.4f", step, result.history[-1], val)
            if val > best_score:
                best_score, best_state = val, copy.deepcopy(model.state_dict())
            model.train()
    model.load_state_dict(best_state)
    model.eval()
    return result


def save_checkpoint(result: TrainResult, path: str | Path) -> None:
    """Weights, model and training config (the split is re-derived from the config's seed)."""
    torch.save(
        {
            "state_dict": result.model.state_dict(),
            "model": result.model.training_config(),
            "train": result.config.model_dump(),
            "history": result.history,
        },
        path,
    )


def load_checkpoint(path: str | Path, graph: Graph | None = None) -> TrainResult:
    """Rebuild a ``TrainResult`` (graph, split, sampler, model) from ``save_checkpoint`` output."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig(**payload["train"])
    graph = graph if graph is not None else load_graph(config)
    split = split_edges(graph.edges, config.val_frac, config.test_frac, seed=config.seed)
    model = create_model("ssmtl", **payload["model"])
    if not isinstance(model, SSMTL):
        raise TypeError("the ssmtl registry entry must build an SSMTL model")
    model.load_state_dict(payload["state_dict"])
    model.eval()
    sampler = NeighbourSampler(graph.num_nodes, split.train, model.config.fanouts)
    return TrainResult(model, graph, split, sampler, config, payload.get("history", []))
