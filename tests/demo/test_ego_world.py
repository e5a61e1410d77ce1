"""The real-data demo world: models learn from visible friendships, simulated users click by held-out ones."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from deploy.demo.ego_facebook import EgoFacebookWorld
from models.graph.datasets import GraphDataError, canonical_edges, load_ego_facebook


@pytest.fixture(scope="module")
def world(ego_data: Path) -> EgoFacebookWorld:
    return EgoFacebookWorld(ego_data, seed=3, verify=False)


def keys(edges: np.ndarray) -> set[tuple[int, int]]:
    return {(int(u), int(v)) for u, v in canonical_edges(edges)}


def test_visible_and_held_out_partition_the_friendships(world: EgoFacebookWorld, ego_data: Path) -> None:
    graph = load_ego_facebook(ego_data, verify=False)
    visible, held_out = keys(world.visible_edges), keys(world.held_out_edges)
    assert not visible & held_out
    assert visible | held_out == keys(graph.edges + 1)  # ids are node ids + 1
    assert len(held_out) == round(0.2 * len(graph.edges))
    assert keys(world.friendship_graph().edges + 1) == visible  # the encoders never see a held-out edge
    assert world.friendship_graph().node_ids.tolist() == list(range(1, world.n_users + 1))


def test_clicks_follow_held_out_friendships_only(world: EgoFacebookWorld) -> None:
    u, v = world.held_out_edges[0]
    a, b = world.visible_edges[0]
    assert world.click_probability(u, np.array([v]))[0] == world.p_friend
    assert world.click_probability(v, np.array([u]))[0] == world.p_friend  # friendship is symmetric
    assert world.click_probability(a, np.array([b]))[0] == world.p_other  # already friends: nothing new
    assert world.click_probability(u, np.array([u]))[0] == 0.0
    users = world.held_out_edges[:, 0]
    np.testing.assert_array_equal(world.click_probability(users, world.held_out_edges[:, 1]), world.p_friend)


def test_training_impressions_come_from_the_visible_past(world: EgoFacebookWorld) -> None:
    data = world.sample(20_000, seed=1)
    users, items = data.sparse[:, 0], data.sparse[:, 2]
    pairs = {(int(min(x, y)), int(max(x, y))) for x, y in zip(users, items, strict=True)}
    connect = data.labels[:, 1].astype(bool)
    visible, held_out = keys(world.visible_edges), keys(world.held_out_edges)
    shown = [(int(min(x, y)), int(max(x, y))) for x, y in zip(users, items, strict=True)]
    assert connect.tolist() == [p in visible for p in shown]
    assert not any(p in held_out for p, c in zip(shown, connect, strict=True) if c)
    assert np.all(users != items)
    social = np.array([len(world.friends(u)) > 0 for u in users])  # most fixture nodes are isolated
    assert 0.2 < connect[social].mean() < 0.8 and len(pairs & visible) > 100  # friends, their friends, anyone
    click = data.labels[:, 0].astype(bool)
    assert click[connect].mean() == pytest.approx(world.p_friend, abs=0.03)
    assert click[~connect].mean() == pytest.approx(world.p_other, abs=0.01)
    assert data.sparse[:, 1].tolist() == world.group[users].tolist()
    table = world.item_table()
    assert table["ids"].tolist() == list(range(1, world.n_users + 1))
    assert [c["name"] for c in data.manifest_features()["sparse"]] == ["user_id", "user_group", "item_id", "item_group"]


def test_groups_come_from_visible_ego_friendships(world: EgoFacebookWorld) -> None:
    egos = [int(np.flatnonzero(world.group == g)[0]) for g in range(1, 11) if np.any(world.group == g)]
    assert len(egos) == 10
    friends_of_first_ego = world.friends(1)  # node 0 (id 1) is the first ego
    assert set(world.group[friends_of_first_ego].tolist()) == {1}


def test_a_missing_or_altered_file_is_named(tmp_path: Path, ego_data: Path) -> None:
    with pytest.raises(GraphDataError, match="facebook_combined.txt: file not found"):
        EgoFacebookWorld(tmp_path)
    with pytest.raises(GraphDataError, match="sha256"):
        EgoFacebookWorld(ego_data)  # our fixture is not the official file


@pytest.mark.integration
@pytest.mark.slow
def test_demo_on_ego_facebook_layout(ego_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--data``: the whole demo on a data folder in ego-Facebook's layout (checksums off for our fixture)."""
    from deploy.demo import world as worlds
    from deploy.demo.cli import build_parser, run

    monkeypatch.setattr(worlds, "EgoFacebookWorld", functools.partial(EgoFacebookWorld, verify=False))
    args = build_parser().parse_args([
        "--data", str(ego_data.parent), "--workdir", str(tmp_path / "demo"), "--users", "120",
        "--requests-per-user", "1", "--impressions", "3000", "--ranking-epochs", "1", "--retrieval-steps", "10",
        "--concurrency", "4",
    ])  # fmt: skip
    summary: dict[str, Any] = run(args)
    assert summary["world"] == str(ego_data.parent)
    assert summary["simulation"]["requests"] == 120 and summary["simulation"]["failed_requests"] == 0
    assert summary["persisted"]["outcomes"] == summary["expected_outcomes"] > 0
    manifest = json.loads((tmp_path / "demo" / "repository" / "mmoe+dml" / "1" / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == ["click", "connect"]
    # ab.yaml weighs the synthetic world's click and rating: the ranker is served a copy weighing click only
    served = yaml.safe_load(Path(summary["experiments_config"]).read_text())
    assert served["defaults"]["ranking"]["task_weights"] == {"click": 1.0}
    retrieval = json.loads((tmp_path / "demo" / "repository" / "ssmtl" / "1" / "manifest.json").read_text())
    assert retrieval["training_config"]["dataset"] == "ego-facebook"
