"""Train and export the demo's four models: two retrieval encoders and two rankers, on the demo's world."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from deploy.demo.world import DemoWorld
from models.data.dataset import Splits
from models.export import export_package
from models.graph.export import write_package
from models.graph.sampling import NeighbourSampler
from models.graph.training import TrainConfig as GraphTrainConfig
from models.graph.training import evaluate as evaluate_retrieval
from models.graph.training import train as train_retrieval_model
from models.train import TrainConfig, train_seed

logger = logging.getLogger(__name__)

# name -> SSMTL loss weights; the retrieval-only baseline is SSMTL without its auxiliary losses.
RETRIEVAL_MODELS = {"ssmtl-retrieval-only": {"beta": 0.0, "gamma": 0.0}, "ssmtl": {}}
RANKING_MODELS = ("mmoe", "mmoe+dml")
VERSION = "1"


@dataclass(frozen=True)
class TrainingBudget:
    """How much each model learns from.

    The ranking control (MMoE) sees ``control_share`` of the treatment's impressions: the demo's ranking
    experiment stands for shipping a model that is really better (more data and DML), so the simulated users,
    whose clicks follow the ground truth, favour the treatment. The two retrieval models get equal budgets.
    """

    impressions: int = 40_000  # ranking training rows sampled from the ground truth
    control_share: float = 0.01
    ranking_epochs: int = 6
    retrieval_steps: int = 150
    seed: int = 0


def train_ranking(world: DemoWorld, repository: Path, budget: TrainingBudget) -> dict[str, dict[str, float]]:
    """Train MMoE (on the control share of the impressions) and MMoE + DML (on all), export both.

    Returns their metrics on the same held-out test rows.
    """
    data = world.sample(budget.impressions, seed=budget.seed)
    splits = data.split((0.8, 0.1, 0.1), seed=budget.seed)
    shares = dict(zip(RANKING_MODELS, (budget.control_share, 1.0), strict=True))
    return {
        name: train_ranker(world, repository, name, name, splits, share, budget)
        for name, share in shares.items()
    }


def train_ranker(
    world: DemoWorld,
    repository: Path,
    name: str,
    family: str,
    splits: Splits,
    share: float,
    budget: TrainingBudget,
) -> dict[str, float]:
    """Train ``family`` on the first ``share`` of the training rows, export it as ``name`` v1; its test metrics."""
    rows = np.arange(int(len(splits.train) * share))
    config = TrainConfig(model=family, max_epochs=budget.ranking_epochs, patience=2, seeds=[budget.seed])
    result = train_seed(config, replace(splits, train=splits.train.subset(rows)), budget.seed)
    export_package(
        result.model,
        repository,
        name,
        VERSION,
        family=family,
        features=splits.train.manifest_features(),
        training_config=config.model_dump(),
        metrics=result.test,
        item_features=world.item_table(),
        overwrite=True,
    )
    logger.info("%s: %s", name, result.test)
    return result.test


def train_retrieval(world: DemoWorld, repository: Path, budget: TrainingBudget) -> dict[str, dict[str, float]]:
    """Train the retrieval-only GAT and SSMTL on the friendship graph and export both with their indexes.

    Training holds out part of the graph to pick and evaluate a checkpoint; the served index then embeds every
    user with all the friendships the product knows (and the retrieval server excludes exactly those).
    """
    graph = world.friendship_graph()
    metrics = {}
    for name, weights in RETRIEVAL_MODELS.items():
        config = GraphTrainConfig(
            **world.retrieval_dataset, seed=budget.seed, steps=budget.retrieval_steps, eval_every=50,
            model={**world.retrieval_model, **weights},
        )
        result = train_retrieval_model(config, graph=graph, progress=True)
        overall = evaluate_retrieval(result)["overall"]
        result.sampler = NeighbourSampler(graph.num_nodes, graph.edges, result.model.config.fanouts)
        write_package(result, repository, name, VERSION, metrics=overall)
        metrics[name] = overall
        logger.info("%s: %s", name, overall)
    return metrics
