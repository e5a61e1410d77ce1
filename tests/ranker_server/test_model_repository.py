"""Hot reload: verification before load, and a swap under load without a single failed request."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio
from prometheus_client import REGISTRY

import ranker_server.inference
import ranker_server.model_repository
import ranker_server.package
from models.package import GOLDEN_FILE, MANIFEST, read_manifest, write_manifest
from proto import ranking_pb2, ranking_pb2_grpc
from ranker_server.errors import PackageError
from ranker_server.exposure import MemorySink
from ranker_server.package import file_sha256, manifest_digest, read_package
from ranker_server.server import RankerServer
from tests.ranker_server.conftest import FakePayload, FakeRouter, MutableSource, make_settings
from tests.ranker_server.rank_packages import build_package

ONLY_V1 = FakeRouter(variants=(("control", FakePayload("tiny", "1")),))
ONLY_V2 = FakeRouter(variants=(("control", FakePayload("tiny", "2")),), default=FakePayload("tiny", "2"))


@pytest.fixture
def repo(tmp_path: Path, repository: Path) -> Path:
    shutil.copytree(repository / "tiny", tmp_path / "tiny")
    return tmp_path


async def start(
    repo: Path, router: FakeRouter, poll_interval_s: float = 0.05
) -> tuple[RankerServer, MutableSource]:
    source = MutableSource(router)
    server = RankerServer(make_settings(repo, poll_interval_s=poll_interval_s), source, MemorySink())
    await server.start()
    return server, source


def failed_loads(version: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "mtrank_model_load_total", {"model": "tiny", "version": version, "outcome": "failed"}
        )
        or 0
    )


def load_states(version: str) -> list[str]:
    """The states ``mtrank_model_load_state`` gives tiny/``version`` (one, unless it is broken)."""
    return [
        sample.labels["mtrank_model_load_state"]
        for family in REGISTRY.collect()
        if family.name == "mtrank_model_load_state"
        for sample in family.samples
        if (sample.labels["model"], sample.labels["version"], sample.value) == ("tiny", version, 1)
    ]


def providers(version: str) -> list[tuple[str, str]]:
    """The (provider, requested) pairs ``mtrank_execution_provider`` exports for tiny/``version``."""
    return [
        (sample.labels["provider"], sample.labels["requested"])
        for family in REGISTRY.collect()
        if family.name == "mtrank_execution_provider"
        for sample in family.samples
        if (sample.labels["model"], sample.labels["version"], sample.value) == ("tiny", version, 1)
    ]


async def test_startup_refuses_a_package_with_a_bad_checksum(repo: Path) -> None:
    onnx = repo / "tiny" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    server = RankerServer(make_settings(repo), MutableSource(ONLY_V1), None)
    with pytest.raises(PackageError, match="sha256"):
        await server.start()
    await server.stop(0)
    assert load_states("1") == ["failed"]  # it stayed `loading`


def _not_utf8_manifest(package: Path) -> str:
    manifest = package / MANIFEST
    manifest.write_bytes(manifest.read_bytes().replace(b'"mmoe"', b'"mmo\xe9"', 1))  # latin-1, not UTF-8
    return f"{manifest}: invalid manifest"


def _manifest_is_a_folder(package: Path) -> str:
    (package / MANIFEST).unlink()
    (package / MANIFEST).mkdir()
    return f"{package / MANIFEST}: unreadable"


def _truncated_golden_signed(package: Path) -> str:
    golden = package / GOLDEN_FILE
    golden.write_bytes(golden.read_bytes()[:100])
    write_manifest(package, read_manifest(package))  # checksums fine, contents not: sha256 cannot tell
    return f"{golden}: unreadable"


def _golden_without_rows(package: Path) -> str:
    golden = dict(np.load(package / GOLDEN_FILE))
    np.savez(package / GOLDEN_FILE, **{k: v[:0] for k, v in golden.items()})
    write_manifest(package, read_manifest(package))
    return f"{package / GOLDEN_FILE}: no rows"


def _features_narrower_than_the_graph(package: Path) -> str:
    manifest = read_manifest(package)
    manifest.features["sparse"].pop(0)
    write_manifest(package, manifest)
    return f"{package / MANIFEST}: features declare 2 sparse / 3 dense columns, the graph takes 3 / 3"


def _a_later_format(package: Path) -> str:
    manifest = read_manifest(package)
    manifest.format_version = 2  # a later exporter's files may mean something else
    write_manifest(package, manifest)
    return f"{package / MANIFEST}: invalid manifest"


BROKEN_PACKAGES = [
    _not_utf8_manifest,
    _a_later_format,
    _manifest_is_a_folder,
    _truncated_golden_signed,
    _golden_without_rows,
    _features_narrower_than_the_graph,
]


@pytest.mark.parametrize("breaks", BROKEN_PACKAGES, ids=lambda f: f.__name__.strip("_"))
async def test_a_broken_package_is_a_package_error_naming_the_file(
    repo: Path, breaks: Callable[[Path], str]
) -> None:
    """Every way a package can be broken stops the start with a one-line reason (``__main__`` prints
    ``PackageError`` without a traceback), never with an error from json, zipfile, numpy or ONNX Runtime."""
    message = breaks(repo / "tiny" / "1")
    server = RankerServer(make_settings(repo), MutableSource(ONLY_V1), None)
    with pytest.raises(PackageError) as raised:
        await server.start()
    await server.stop(0)
    assert message in raised.value.reason


@pytest.mark.parametrize("breaks", BROKEN_PACKAGES, ids=lambda f: f.__name__.strip("_"))
async def test_a_broken_republish_is_logged_and_the_loaded_version_keeps_serving(
    repo: Path, breaks: Callable[[Path], str], caplog: pytest.LogCaptureFixture
) -> None:
    """A poll that meets a broken republish counts a failed load and keeps the old version, rather than
    raising out of ``refresh`` (the poll would log a traceback and retry the load on every poll)."""
    server, _ = await start(repo, ONLY_V1)
    try:
        old = server.repository.snapshot.models[("tiny", "1")]
        before = failed_loads("1")
        message = breaks(repo / "tiny" / "1")
        for _ in range(2):
            assert await server.repository.refresh()
        assert server.repository.snapshot.models[("tiny", "1")] is old
        assert failed_loads("1") == before + 1  # the same broken files are not retried on every poll
        assert load_states("1") == ["ready"]  # it serves; it stayed `loading`
        assert any(message in record.getMessage() for record in caplog.records)
    finally:
        await server.stop(0)


async def test_new_version_with_wrong_golden_outputs_is_rejected_and_old_keeps_serving(repo: Path) -> None:
    server, source = await start(repo, ONLY_V1)
    try:
        build_package(repo, "tiny", "3", seed=3, corrupt_golden=True)
        before = failed_loads("3")
        source.current = FakeRouter(variants=(("control", FakePayload("tiny", "3")),))
        assert not await server.repository.refresh()
        assert failed_loads("3") == before + 1
        assert load_states("3") == ["failed"]
        assert server.repository.snapshot.router is ONLY_V1
        assert set(server.repository.snapshot.models) == {("tiny", "1")}
    finally:
        await server.stop(0)


async def test_a_failed_version_the_config_no_longer_names_is_unloaded(repo: Path) -> None:
    """tiny/3 fails to load, then the config moves on to tiny/2: tiny/3 stayed `failed` (and its alert firing)
    until the process ended, though nothing asked for it any more."""
    server, source = await start(repo, ONLY_V1, poll_interval_s=3600)
    try:
        build_package(repo, "tiny", "3", seed=3, corrupt_golden=True)
        source.current = FakeRouter(variants=(("control", FakePayload("tiny", "3")),))
        assert not await server.repository.refresh()
        assert load_states("3") == ["failed"]
        source.current = ONLY_V2
        assert await server.repository.refresh()
        assert load_states("3") == ["unloaded"]
        assert load_states("2") == ["ready"]
    finally:
        await server.stop(0)


async def test_republished_version_is_reloaded_when_its_manifest_changes(repo: Path) -> None:
    server, _ = await start(repo, ONLY_V1)
    try:
        old = server.repository.snapshot.models[("tiny", "1")]
        assert await server.repository.refresh()
        assert server.repository.snapshot.models[("tiny", "1")] is old  # nothing changed, nothing reloaded
        build_package(repo, "tiny", "1", seed=7)
        assert await server.repository.refresh()
        new = server.repository.snapshot.models[("tiny", "1")]
        assert new is not old and new.package.manifest_digest != old.package.manifest_digest
    finally:
        await server.stop(0)


async def test_a_version_is_loading_only_while_it_does_not_serve_yet(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new version is `loading` during its load; a republish of a serving version is loaded while its old
    files serve, so it stays `ready` (it read `loading` until the load ended, and for good if it failed)."""
    seen: list[list[str]] = []
    real = ranker_server.model_repository.load_model

    def observed(path: Path, *args: Any) -> Any:
        seen.append(load_states(path.name))
        return real(path, *args)

    monkeypatch.setattr(ranker_server.model_repository, "load_model", observed)
    build_package(repo, "tiny", "4", seed=4)
    only_v4 = FakeRouter(variants=(("control", FakePayload("tiny", "4")),), default=FakePayload("tiny", "4"))
    server, _ = await start(repo, only_v4, poll_interval_s=3600)  # refreshed by the test only
    try:
        build_package(repo, "tiny", "4", seed=5)
        assert await server.repository.refresh()
        assert seen == [["loading"], ["ready"]]
        assert load_states("4") == ["ready"]
    finally:
        await server.stop(0)


async def test_an_unloaded_version_exports_no_provider(repo: Path) -> None:
    """``mtrank_execution_provider`` is about the versions loaded: an unloaded one kept its series at 1, and
    a fallback alert on it would fire until the process ended."""
    server, source = await start(repo, ONLY_V1, poll_interval_s=3600)
    try:
        runner = server.repository.snapshot.models[("tiny", "1")].runner
        assert providers("1") == [(runner.provider, runner.requested)]
        source.current = ONLY_V2
        assert await server.repository.refresh()
        await asyncio.gather(*server.repository._draining)
        assert load_states("1") == ["unloaded"]
        assert providers("1") == []
        assert providers("2") == [(runner.provider, runner.requested)]
    finally:
        await server.stop(0)


async def test_a_version_named_again_while_it_drains_stays_ready(repo: Path) -> None:
    """tiny/1 unloaded while a request holds it, named again and loaded before that request ends: the end of
    its old drain marked the new load `unloaded` and dropped its provider series."""
    server, source = await start(repo, ONLY_V1, poll_interval_s=3600)
    try:
        with server.repository.snapshot.models[("tiny", "1")].use():
            source.current = ONLY_V2
            assert await server.repository.refresh()
            source.current = ONLY_V1
            assert await server.repository.refresh()
            assert load_states("1") == ["ready"]
        await asyncio.gather(*server.repository._draining)
        runner = server.repository.snapshot.models[("tiny", "1")].runner
        assert load_states("1") == ["ready"]
        assert providers("1") == [(runner.provider, runner.requested)]
    finally:
        await server.stop(0)


async def test_a_reload_that_gets_other_providers_replaces_their_series(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A republish loaded where ONNX Runtime offers the CPU only (as the CPU image's build): the version's
    series says so, and the previous load's (CUDA asked for here, CUDA or the CPU obtained) is gone."""
    server, _ = await start(repo, ONLY_V1, poll_interval_s=3600)
    try:
        runner = server.repository.snapshot.models[("tiny", "1")].runner
        assert runner.requested == "CUDAExecutionProvider"  # onnxruntime-gpu (pyproject.toml) offers it
        assert providers("1") == [(runner.provider, runner.requested)]
        only_cpu = ["CPUExecutionProvider"]
        monkeypatch.setattr(ranker_server.inference.ort, "get_available_providers", lambda: only_cpu)
        build_package(repo, "tiny", "1", seed=7)
        assert await server.repository.refresh()
        assert providers("1") == [("CPUExecutionProvider", "CPUExecutionProvider")]
    finally:
        await server.stop(0)


def _republishing_first(repo: Path, real: Callable[..., Any], skip: str = "") -> Callable[..., Any]:
    """``real``, which republishes tiny/1 with other weights the first time it is called (on a path not named
    ``skip``), before it runs."""
    republished = []

    def wrapper(first: Any, *args: Any, **kwargs: Any) -> Any:
        if not republished and Path(first).name != skip:
            build_package(repo, "tiny", "1", seed=7)
            republished.append(True)
        return real(first, *args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    "module, between, skip",
    [(ranker_server.package, "file_sha256", MANIFEST), (ranker_server.model_repository, "OnnxRanker", "")],
    ids=["the manifest and the checksums", "the package read and the graph"],
)
async def test_a_server_starting_while_its_version_is_republished_starts_on_it_whole(
    repo: Path, monkeypatch: pytest.MonkeyPatch, module: ModuleType, between: str, skip: str
) -> None:
    """The manifest was read, then the other files opened by path: a republish in between checked the new
    files against the old manifest (a sha256 error), or ran the new graph against the old golden outputs,
    and the server did not start."""
    monkeypatch.setattr(module, between, _republishing_first(repo, getattr(module, between), skip))
    server, _ = await start(repo, ONLY_V1)
    try:
        loaded = server.repository.snapshot.models[("tiny", "1")].package
        assert loaded.manifest_digest == manifest_digest(repo / "tiny" / "1")
        assert np.array_equal(loaded.golden["logits"], np.load(repo / "tiny" / "1" / GOLDEN_FILE)["logits"])
    finally:
        await server.stop(0)


def test_a_corrupt_package_read_fails_with_its_own_error(repo: Path) -> None:
    """Nothing republished it: the checksum error, as it was, not a retry's."""
    items = repo / "tiny" / "1" / "item_features.npz"
    expected = file_sha256(items)
    items.write_bytes(items.read_bytes() + b"\0")
    with pytest.raises(PackageError) as raised:
        read_package(repo / "tiny" / "1")
    actual = file_sha256(items)
    assert raised.value.reason == f"{items}: sha256 {actual} does not match the manifest's {expected}"


@pytest.mark.integration
async def test_swap_under_load_fails_no_request(repo: Path) -> None:
    server, source = await start(repo, ONLY_V1)
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = ranking_pb2_grpc.RankerStub(channel)
    versions: list[str] = []
    failures: list[grpc.StatusCode] = []
    late: list[str] = []  # versions of the requests sent after a v2 answer had arrived
    stop = asyncio.Event()

    async def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            req = ranking_pb2.RankRequest(user_id=f"u{i}-{n}", candidate_ids=list(range(1000, 1100)), top_k=5)
            sent_after_swap = "2" in versions
            try:
                version = (await stub.Rank(req, timeout=5)).model.version
            except aio.AioRpcError as exc:
                failures.append(exc.code())
                continue
            versions.append(version)
            if sent_after_swap:
                late.append(version)

    clients = [asyncio.create_task(client(i)) for i in range(8)]
    try:
        await asyncio.sleep(0.3)
        old = server.repository.snapshot.models[("tiny", "1")]
        source.current = ONLY_V2  # the config now names version 2 only: load, check, warm up, swap, drain v1
        for _ in range(100):
            await asyncio.sleep(0.05)
            if versions and versions[-1] == "2":
                break
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)
        assert failures == []
        assert len(versions) > 40, "the load must overlap the swap"
        assert "1" in versions and versions[-1] == "2"
        # After the swap only requests already in flight may finish on v1: at most one per client, and none sent
        # after a v2 answer (completion order alone is timing-sensitive: a v1 answer once arrived 9th of 8 allowed).
        assert late and set(late) == {"2"}
        assert versions[versions.index("2") :].count("1") <= 8
        assert set(server.repository.snapshot.models) == {("tiny", "2")}
        for _ in range(50):
            if old._active == 0 and all(b.idle for b in old._batchers.values()):
                break
            await asyncio.sleep(0.02)
        state = {"model": "tiny", "version": "1", "mtrank_model_load_state": "unloaded"}
        for _ in range(50):
            if REGISTRY.get_sample_value("mtrank_model_load_state", state) == 1:
                break
            await asyncio.sleep(0.02)
        assert REGISTRY.get_sample_value("mtrank_model_load_state", state) == 1
    finally:
        stop.set()
        await channel.close()
        await server.stop(1)
