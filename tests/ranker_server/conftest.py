"""Fixtures: tiny model packages built with torch, a router stand-in, a running server on a free port."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc import aio

from proto import ranking_pb2_grpc
from ranker_server.config import BatchingSettings, ServerSettings
from ranker_server.exposure import MemorySink
from ranker_server.routing import RANKING
from ranker_server.server import RankerServer
from tests.ranker_server.rank_packages import build_package


@dataclass(frozen=True)
class FakePayload:
    model_name: str
    model_version: str
    task_weights: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeAssignment:
    experiment_key: str
    variant_key: str | None
    variation_id: int
    stage: str
    layer: str | None
    in_experiment: bool
    should_log: bool
    payload: FakePayload
    interleaving: object | None = None


@dataclass
class FakeRouter:
    """Router-shaped stand-in with the contract's semantics: users "out-*" are outside every experiment,
    users "qa-*" are forced (in the experiment, not logged), others split by a stable hash."""

    variants: tuple[tuple[str, FakePayload], ...] = (
        ("control", FakePayload("tiny", "1", {"click": 1.0, "watch": 0.0})),
        ("treatment", FakePayload("tiny", "2", {"click": 0.5, "watch": 0.5})),
    )
    default: FakePayload = FakePayload("tiny", "1", {"click": 1.0})
    retrieval_default: FakePayload = FakePayload("graph", "1")

    def assign(self, user_id: str, attributes: Mapping[str, str] | None = None) -> list[FakeAssignment]:
        if user_id.startswith("out-"):
            return [FakeAssignment("rank-exp", None, -1, RANKING, "rank", False, False, self.default)]
        i = int(hashlib.sha256(user_id.encode()).hexdigest(), 16) % len(self.variants)
        key, payload = self.variants[i]
        return [
            FakeAssignment("rank-exp", key, i, RANKING, "rank", True, not user_id.startswith("qa-"), payload)
        ]

    def model_refs(self) -> set[tuple[str, str, str]]:
        return {(RANKING, p.model_name, p.model_version) for _, p in self.variants}

    def default_for(self, stage: str) -> FakePayload:
        return self.default if stage == RANKING else self.retrieval_default


@dataclass
class MutableSource:
    """A router source whose ``current`` a test can swap, like a hot-reloading config watcher."""

    current: FakeRouter


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    build_package(root, "tiny", "1", seed=0)
    build_package(root, "tiny", "2", seed=1)
    return root


def make_settings(repository: Path, **overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "repository": repository,
        "experiments": repository / "experiments.yaml",
        "port": 0,
        "poll_interval_s": 0.2,
        "grace_s": 2.0,
        "not_serving_delay_s": 0.0,
        "batching": BatchingSettings(max_batch_rows=256, max_delay_ms=1.0),
    }
    values.update(overrides)
    return ServerSettings.model_validate(values)


@dataclass
class Running:
    server: RankerServer
    channel: aio.Channel
    stub: ranking_pb2_grpc.RankerStub
    sink: MemorySink
    source: MutableSource


async def serving(repository: Path, source: MutableSource, **overrides: object) -> AsyncIterator[Running]:
    """A server on a free port over ``source`` with a channel to it, exposures kept in memory; stopped after.
    ``overrides``: settings other than ``make_settings``'s."""
    sink = MemorySink()
    server = RankerServer(make_settings(repository, **overrides), source, sink)
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(server, channel, ranking_pb2_grpc.RankerStub(channel), sink, source)
    finally:
        await channel.close()
        await server.stop(grace_s=1.0)


@pytest.fixture
async def running(repository: Path) -> AsyncIterator[Running]:
    async for running in serving(repository, MutableSource(FakeRouter())):
        yield running


def code_of(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, aio.AioRpcError), exc
    return exc.code()
