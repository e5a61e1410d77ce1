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

from models.checkpoints import read_checkpoint
from models.errors import ModelsError
from models.graph.datasets import Graph, load_ego_facebook, synthetic_graph
from models.graph.metrics import per_user_metrics, summarise
from models.graph.sampling import NeighbourSampler
from models.graph.split import EdgeSplit, cold_start_split, split_edges
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
    split: Literal["random", "cold-start"] = Field(
        "random", description="random edge split, or the same plus cold-start users (models/graph/split.py)"
    )
    cold_users: int = Field(500, ge=1, description="cold-start split: how many users become cold")
    cold_max_degree: int = Field(10, ge=0, description="cold-start split: most training friendships kept")
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


def make_split(config: TrainConfig, graph: Graph) -> EdgeSplit:
    """The configured split of ``graph``'s edges (a pure function of the config's seed)."""
    if config.split == "cold-start":
        return cold_start_split(
            graph.edges,
            graph.num_nodes,
            config.val_frac,
            config.test_frac,
            config.cold_users,
            config.cold_max_degree,
            seed=config.seed,
        )
    return split_edges(graph.edges, config.val_frac, config.test_frac, seed=config.seed)


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
    """Metrics on held-out ``part`` edges, overall, by training degree and for the cold-start users if any."""
    embeddings = embed_all(result.model, torch.from_numpy(result.graph.features), result.sampler)
    known = result.split.train if part == "val" else np.concatenate([result.split.train, result.split.val])
    heldout = result.split.val if part == "val" else result.split.test
    per_user = per_user_metrics(embeddings, known, heldout)
    groups = {} if result.split.cold_users is None else {"cold-start users": result.split.cold_users}
    return summarise(per_user, result.sampler.degree(), groups)


def encoder_gradient_norms(model: SSMTL, losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """L2 norm of each weighted Eq. 6 term's gradient on the shared GAT encoder (how hard each term pulls)."""
    c = model.config
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    norms = {}
    for name, weight in (("retrieval", c.alpha), ("cca", c.beta), ("mae", c.gamma)):
        term = weight * losses[name]
        if not term.requires_grad:
            norms[f"grad/{name}"] = 0.0
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms[f"grad/{name}"] = float(
            torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.zeros(())))
        )
    return norms


def train(config: TrainConfig, graph: Graph | None = None, progress: bool = True) -> TrainResult:
    """Train on the training edges, keeping the checkpoint with the best validation Recall@50 (the earliest
    evaluation on a tie; the test edges never take part).

    Raises:
        ModelsError: the split has no validation friendship to choose the checkpoint on.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    graph = graph if graph is not None else load_graph(config)
    split = make_split(config, graph)
    if len(split.val) == 0:  # every evaluation would score NaN and the untrained weights would be kept
        raise ModelsError(
            f"val_frac={config.val_frac} leaves no validation friendship among {len(graph.edges)}: "
            "the checkpoint is chosen on validation Recall@50"
        )
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
    running: dict[str, float] = {}
    since = 0
    for step in bar:
        pairs = split.train[rng.integers(0, len(split.train), config.batch_size)]
        flip = rng.random(len(pairs)) < 0.5
        pairs = np.where(flip[:, None], pairs[:, ::-1], pairs)
        losses = model.training_losses(features, sampler, pairs, rng)
        evaluating = step % config.eval_every == 0 or step == config.steps
        norms = encoder_gradient_norms(model, losses) if evaluating else {}
        optimiser.zero_grad()
        losses["total"].backward()
        optimiser.step()
        for name, value in losses.items():
            running[name] = running.get(name, 0.0) + value.item()
        since += 1
        bar.set_postfix(loss=f"{losses['total'].item():.3f}")
        if evaluating:
            slices = evaluate(result, "val")
            val = slices["overall"]["recall@50"]
            result.history.append(
                {"step": step}
                | {name: total / since for name, total in running.items()}  # mean over the interval
                | norms
                | {"val_recall@50": val}
                | {
                    f"val_recall@50/{label}": s["recall@50"]
                    for label, s in slices.items()
                    if label != "overall"
                }
            )
            running, since = {}, 0
            logger.info("step %d: %s", step, result.history[-1])
            if val > best_score:
                best_score, best_state = val, copy.deepcopy(model.state_dict())
            model.train()
    model.load_state_dict(best_state)
    model.eval()
    return result


def save_checkpoint(result: TrainResult, path: str | Path) -> None:
    """Weights, model and training config (the split is re-derived from the config's seed).

    Raises:
        ModelsError: ``path`` cannot be written (after training: the message says where to write instead).
    """
    payload = {
        "state_dict": result.model.state_dict(),
        "model": result.model.training_config(),
        "train": result.config.model_dump(),
        "history": result.history,
    }
    try:
        torch.save(payload, path)
    except (OSError, RuntimeError) as exc:  # torch raises RuntimeError for a missing folder
        reason = getattr(exc, "strerror", None) or exc
        raise ModelsError(f"cannot write checkpoint {path}: {reason}") from None


def load_checkpoint(path: str | Path, graph: Graph | None = None) -> TrainResult:
    """Rebuild a ``TrainResult`` (graph, split, sampler, model) from ``save_checkpoint`` output.

    Raises:
        ModelsError: ``path`` is no such checkpoint.
    """
    payload = read_checkpoint(path, ("state_dict", "model", "train"), "python -m models.retrieval train")
    config = TrainConfig(**payload["train"])
    graph = graph if graph is not None else load_graph(config)
    split = make_split(config, graph)
    model = create_model("ssmtl", **payload["model"])
    if not isinstance(model, SSMTL):
        raise TypeError("the ssmtl registry entry must build an SSMTL model")
    model.load_state_dict(payload["state_dict"])
    model.eval()
    sampler = NeighbourSampler(graph.num_nodes, split.train, model.config.fanouts)
    return TrainResult(model, graph, split, sampler, config, payload.get("history", []))
