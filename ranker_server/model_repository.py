"""Model repository: the set of loaded model versions and the router they serve, swapped as one snapshot.

A request reads ``repository.snapshot`` once and uses that router and those sessions to the end, so a swap
never mixes an old assignment with a new model. ``refresh`` (polled) loads what the router in force names,
verifies each package (sha256), checks its golden outputs and warms it up before the snapshot is swapped;
replaced versions drain: they finish the requests that hold them, then close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grpc_serving.version_folder import load_without_swap
from ranker_server import metrics
from ranker_server.batching import MicroBatcher
from ranker_server.config import BatchingSettings, RuntimeSettings
from ranker_server.errors import PackageError
from ranker_server.factored import load_factored, sample_request
from ranker_server.features import ItemTable, user_item_rows
from ranker_server.inference import GraphRows, ModelInput, OnnxRanker, UserItemRows
from ranker_server.package import ModelPackage, manifest_digest, read_package
from ranker_server.routing import Router, RouterSource, ranking_refs
from ranker_server.traffic import SequentialTraffic

logger = logging.getLogger(__name__)

ModelKey = tuple[str, str]


class LoadedModel:
    """One verified, warmed-up model version with its sessions, item table and batchers (one per variant).

    ``factored`` scores Rank's candidates that come from the item table (``UserItemRows``) when the package has
    a factored graph and its item parts fit ``factored_max_mb``; everything else goes to ``runner``.
    """

    def __init__(
        self,
        package: ModelPackage,
        runner: OnnxRanker,
        batching: BatchingSettings,
        executor: Executor,
        workers: int,
        table: ItemTable,
        factored: OnnxRanker | None = None,
        traffic: SequentialTraffic | None = None,
    ) -> None:
        self.package = package
        self.runner = runner
        self.factored = factored
        self.table = table
        self.task_names = tuple(t.name for t in package.manifest.tasks)
        self.binary_tasks = tuple(t.type == "binary" for t in package.manifest.tasks)
        self._batching = batching
        self._executor = executor
        self._traffic = traffic
        self._workers = workers
        self._batchers: dict[str, MicroBatcher] = {}
        self._active = 0

    @property
    def key(self) -> ModelKey:
        return self.package.manifest.name, self.package.manifest.version

    @contextlib.contextmanager
    def use(self) -> Iterator[LoadedModel]:
        """Hold the model for one request; draining waits until nobody holds it."""
        self._active += 1
        try:
            yield self
        finally:
            self._active -= 1

    def batcher(self, variant: str) -> MicroBatcher:
        """The batcher of ``variant`` on this version: variants never share a batch."""
        batcher = self._batchers.get(variant)
        if batcher is None:
            batcher = MicroBatcher(self._score, self._batching, *self.key, self._workers)
            self._batchers[variant] = batcher
        return batcher

    async def _score(self, inputs: ModelInput) -> np.ndarray:
        runner = self.factored if isinstance(inputs, UserItemRows) and self.factored else self.runner
        return await runner.infer(inputs, self._executor, self._traffic)

    async def drain(self, poll_s: float = 0.01) -> None:
        """Wait for every request holding this version, then stop its batchers."""
        while self._active:
            await asyncio.sleep(poll_s)
        await asyncio.gather(*(b.close() for b in self._batchers.values()))


def load_model(
    path: Path,
    runtime: RuntimeSettings,
    batching: BatchingSettings,
    executor: Executor,
    traffic: SequentialTraffic | None = None,
) -> LoadedModel:
    """Verify, load, check against the golden outputs and warm up the package in ``path`` (blocking); again
    when a publish replaced it meanwhile: the graphs are opened by path after the package is read.

    Raises:
        PackageError: when any step fails; nothing is half-loaded.
    """
    return load_without_swap(
        path, lambda: _load_model_once(path, runtime, batching, executor, traffic), PackageError
    )


def _load_model_once(
    path: Path,
    runtime: RuntimeSettings,
    batching: BatchingSettings,
    executor: Executor,
    traffic: SequentialTraffic | None,
) -> LoadedModel:
    package = read_package(path)
    label = f"{package.manifest.name}/{package.manifest.version}"
    runner = OnnxRanker(str(package.onnx_path), runtime, label)
    golden = package.golden
    try:
        sparse = np.asarray(golden["sparse"], np.int64)
        dense = np.asarray(golden["dense"], np.float32)
        expected = np.asarray(golden["logits"], np.float32)
    except KeyError as exc:
        raise PackageError(f"{path / 'golden.npz'}: missing array {exc}") from None
    except (TypeError, ValueError) as exc:  # e.g. strings where ids belong
        raise PackageError(f"{path / 'golden.npz'}: {exc}") from None
    if sparse.shape[:1] == (0,):  # no rows would check nothing; warm-up and the factored check need a user
        raise PackageError(f"{path / 'golden.npz'}: no rows")
    runner.check(GraphRows(sparse, dense), expected, runtime, f"{label}: golden.npz")
    layout = package.layout
    widths = (layout.user_sparse + layout.item_sparse, layout.user_dense + layout.item_dense)
    if widths != (sparse.shape[1], dense.shape[1]):  # requests are built from the manifest's columns
        raise PackageError(
            f"{path / 'manifest.json'}: features declare {widths[0]} sparse / {widths[1]} dense columns, "
            f"the graph takes {sparse.shape[1]} / {dense.shape[1]}"
        )
    if len(package.manifest.tasks) != expected.shape[1]:
        raise PackageError(
            f"{label}: manifest lists {len(package.manifest.tasks)} tasks, logits have {expected.shape[1]}"
        )
    table = ItemTable(package)
    factored = load_factored(package, table, runner, runtime, label)
    for rows in runtime.warmup_rows:  # first calls allocate arenas and pick kernels; pay that before traffic
        rows = min(rows, batching.max_batch_rows)
        index = np.arange(rows) % len(sparse)
        for alone in runner.alone_values:
            runner.run(GraphRows(sparse[index], dense[index]), alone)
        if factored is not None:
            inputs, _ = user_item_rows(package.layout, table, *sample_request(package, table, rows))
            for alone in factored.alone_values:
                factored.run(inputs, alone)
    return LoadedModel(
        package, runner, batching, executor, runtime.inference_threads, table, factored, traffic
    )


@dataclass(frozen=True)
class Snapshot:
    """The router in force and every model version it can send traffic to."""

    router: Router
    models: Mapping[ModelKey, LoadedModel] = field(default_factory=dict)


class ModelRepository:
    """Loads what the router names from ``root/<name>/<version>/`` and keeps it current."""

    def __init__(
        self,
        root: Path,
        source: RouterSource,
        runtime: RuntimeSettings,
        batching: BatchingSettings,
        executor: Executor,
        traffic: SequentialTraffic | None = None,
    ) -> None:
        """``traffic``: the server's calls, by which a lone run may use the loop's thread (``infer``)."""
        self._root = root
        self._source = source
        self._runtime = runtime
        self._batching = batching
        self._executor = executor
        self._traffic = traffic
        self._snapshot: Snapshot | None = None
        self._failed: dict[ModelKey, str] = {}  # key -> manifest digest that failed; retried when it changes
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()

    @property
    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            raise RuntimeError("ModelRepository.start() has not run")
        return self._snapshot

    @property
    def loaded(self) -> bool:
        """Whether the first load finished: every model version the router named then is ready."""
        return self._snapshot is not None

    async def start(self) -> None:
        """Load everything the current router names.

        Raises:
            PackageError: when a named model is missing or broken: the server must not start half-loaded.
        """
        if not await self.refresh(strict=True):
            raise PackageError("initial model load failed")

    async def refresh(self, strict: bool = False) -> bool:
        """Bring the snapshot in line with the router in force and the packages on disk.

        Returns:
            False when a needed model could not be loaded; the previous snapshot then stays in force.
        """
        async with self._lock:
            router = self._source.current
            old = self._snapshot
            old_models = old.models if old is not None else {}
            models: dict[ModelKey, LoadedModel] = {}
            for key in sorted(ranking_refs(router)):
                current = old_models.get(key)
                path = self._root.joinpath(*key)
                try:
                    digest = manifest_digest(path)
                except OSError:
                    digest = "missing"
                if current is not None and current.package.manifest_digest == digest:
                    models[key] = current
                    continue
                if not strict and self._failed.get(key) == digest:
                    if current is None:
                        return False
                    models[key] = current  # known-bad republish: keep serving the old one
                    continue
                try:
                    models[key] = await self._load(key, path, serving=current is not None)
                except PackageError as exc:
                    self._load_failed(key, digest, exc, serving=current is not None)
                    if strict:
                        raise
                    if current is None:
                        metrics.SNAPSHOT_SWAPS.labels("rejected").inc()
                        return False
                    models[key] = current
            if old is not None and old.router is router and models == dict(old_models):
                return True
            self._snapshot = Snapshot(router, models)
            metrics.SNAPSHOT_SWAPS.labels("swapped").inc()
            self._forget_failed(models)
            for key, model in old_models.items():
                if models.get(key) is not model:
                    self._retire(model, replaced=key in models)
            return True

    async def _load(self, key: ModelKey, path: Path, serving: bool) -> LoadedModel:
        """Load ``path`` as ``key``; ``serving``: the version's previous files serve meanwhile, so its state
        stays ``ready`` (``loading`` would say that it does not serve)."""
        if not serving:
            metrics.MODEL_STATE.labels(*key).state("loading")
        loop = asyncio.get_running_loop()
        # Loading is blocking and CPU-heavy: a worker thread keeps the event loop answering requests.
        model = await loop.run_in_executor(
            None, load_model, path, self._runtime, self._batching, self._executor, self._traffic
        )
        metrics.MODEL_LOADS.labels(*key, "loaded").inc()
        metrics.MODEL_STATE.labels(*key).state("ready")
        metrics.set_provider(*key, model.runner.provider, model.runner.requested)
        self._failed.pop(key, None)
        logger.info("model %s/%s ready on %s", *key, model.runner.provider)
        return model

    def _load_failed(self, key: ModelKey, digest: str, exc: PackageError, serving: bool) -> None:
        """Count and log a failed load; a version that never loaded is ``failed``, one still serving its
        previous files stays ``ready`` (the failure is in ``mtrank_model_load_total{outcome="failed"}``)."""
        self._failed[key] = digest
        metrics.MODEL_LOADS.labels(*key, "failed").inc()
        logger.error("model %s/%s not loaded: %s", *key, exc.reason)
        if not serving:
            metrics.MODEL_STATE.labels(*key).state("failed")

    def _forget_failed(self, named: Mapping[ModelKey, LoadedModel]) -> None:
        """Versions that failed to load and that the router in force no longer names are ``unloaded``: left
        ``failed``, a version nobody asks for kept its alert firing until the process ended."""
        for key in [key for key in self._failed if key not in named]:
            del self._failed[key]
            metrics.MODEL_STATE.labels(*key).state("unloaded")

    def _retire(self, model: LoadedModel, replaced: bool) -> None:
        key = model.key
        if not replaced:
            metrics.MODEL_STATE.labels(*key).state("draining")

        async def drain() -> None:
            await model.drain()
            if key not in self.snapshot.models:  # else named again and loaded meanwhile: it serves
                metrics.MODEL_STATE.labels(*key).state("unloaded")
                metrics.clear_provider(*key)
            logger.info("model %s/%s drained (%s)", *key, "replaced" if replaced else "unloaded")

        task = asyncio.get_running_loop().create_task(drain())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def poll(self, interval_s: float) -> None:
        """Refresh every ``interval_s`` seconds until cancelled; errors are logged, never fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:  # a poll must never take the server down
                logger.exception("model repository refresh failed")

    async def close(self) -> None:
        """Drain every loaded model (after the server stopped taking requests)."""
        if self._snapshot is not None:
            for model in self._snapshot.models.values():
                await model.drain()
        await asyncio.gather(*self._draining, return_exceptions=True)
