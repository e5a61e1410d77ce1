"""ONNX Runtime sessions of a loaded model version (provider choice, thread settings, IO binding on GPU) and the
two kinds of rows they score: rows given in full (the package graph) and one user's row with its candidates' item
rows (the factored graph, ``models.factored``)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self, TypeVar

import numpy as np
import onnxruntime as ort

from ranker_server.config import RuntimeSettings
from ranker_server.errors import PackageError
from ranker_server.metrics import LONE_RUNS, LOOP_RUNS
from ranker_server.traffic import SequentialTraffic

logger = logging.getLogger(__name__)
T = TypeVar("T")
_LONE_RUNS = {spin: LONE_RUNS.labels("spinning" if spin else "sleeping") for spin in (True, False)}
_SPLIT_RUNS = LONE_RUNS.labels("split")

_GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
PACKAGE_INPUTS = ("sparse", "dense")


class ModelInput(Protocol):
    """Rows for one run, from one request or concatenated from several by the batcher."""

    def __len__(self) -> int: ...

    def split(self, step: int) -> list[Self]:
        """Consecutive parts of at most ``step`` rows (one part when there are none)."""
        ...

    @classmethod
    def concat(cls, parts: Sequence[Self]) -> Self: ...

    def feeds(self) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class GraphRows:
    """Rows given in full for the package graph: ``sparse`` int64 [N, S], ``dense`` float32 [N, D]."""

    sparse: np.ndarray
    dense: np.ndarray

    def __len__(self) -> int:
        return len(self.sparse)

    def split(self, step: int) -> list[GraphRows]:
        return [GraphRows(self.sparse[i : i + step], self.dense[i : i + step]) for i in range(0, max(len(self), 1), step)]

    @classmethod
    def concat(cls, parts: Sequence[GraphRows]) -> GraphRows:
        return cls(np.concatenate([p.sparse for p in parts]), np.concatenate([p.dense for p in parts]))

    def feeds(self) -> dict[str, np.ndarray]:
        return {"sparse": self.sparse, "dense": self.dense}


@dataclass(frozen=True)
class UserItemRows:
    """Rows for the factored graph: user rows and, per candidate, its item-table row and its user's row.

    ``user_sparse`` int64 [U, S_user], ``user_dense`` float32 [U, D_user]; ``rows`` int64 [N]: each candidate's
    row of the item parts; ``segment`` int64 [N]: each candidate's user row. A request brings one user; a batch
    of several requests one per request.
    """

    user_sparse: np.ndarray
    user_dense: np.ndarray
    rows: np.ndarray
    segment: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def split(self, step: int) -> list[UserItemRows]:
        return [
            UserItemRows(self.user_sparse, self.user_dense, self.rows[i : i + step], self.segment[i : i + step])
            for i in range(0, max(len(self), 1), step)
        ]

    @classmethod
    def concat(cls, parts: Sequence[UserItemRows]) -> UserItemRows:
        offsets = np.cumsum([0, *(len(p.user_sparse) for p in parts[:-1])])
        return cls(
            np.concatenate([p.user_sparse for p in parts]),
            np.concatenate([p.user_dense for p in parts]),
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.segment + offset for p, offset in zip(parts, offsets, strict=True)]),
        )

    def feeds(self) -> dict[str, np.ndarray]:
        return {
            "user_sparse": self.user_sparse,
            "user_dense": self.user_dense,
            "rows": self.rows,
            "segment": self.segment,
        }


def session_options(settings: RuntimeSettings, spin: bool = False) -> ort.SessionOptions:
    """Session options from the settings; thread counts are a measured choice (see the benchmark note).

    ``spin``: pool threads spin-wait for work while a run is in progress (quicker hand-offs between the
    graph's parallel sections) and stop as soon as it returns, so they never take the cores between runs.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = settings.intra_op_threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = settings.inter_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3  # a missing CUDA library falls back to CPU; we log the outcome ourselves
    return options


class LoneRunChooser:
    """Picks the session of a run alone in the process: the spinning one while its lone runs measure faster.

    Spinning pool threads hand work over sooner (-1 ms at concurrency 1 on idle cores), but on cores that other
    processes keep busy they wait for a core instead of for work, and a lone run took twice as long as on the
    sleeping session (benchmarks/results/serving_peers.md). So lone runs go to the session with the lower
    running median time for their batch-size class, and two in ``explore_every`` go to the other, so that a
    change of load is noticed. The median, not the mean: spinning runs have the faster middle and the heavier
    tail (2.9 vs 3.6 ms median, 5.9 vs 4.5 ms p90 in that benchmark's mixed traffic), and a mean that the tail
    kept pushing up sent lone runs to the slower session. Two in a row, because the first run after a switch
    finds the other session's weights and threads cold (+0.1 to +0.5 ms measured): only a run that follows one
    on the same session is recorded (``OnnxRanker.infer``), so the check is the second. Each check costs three
    slow runs (two on the other session, one cold back), so checks are rare: one block of 64 lone runs each
    (-0.12 and -0.22 ms at concurrency 1 against 16 in mixed traffic); a session that got slower is left within
    ~15 runs, one that got faster again is taken back within three checks (the sleeping session, when not
    in use, is estimated by the median of its last three samples; replaying logged run times after a busy
    phase, 0.89 of the lone runs went to the faster session, 0.42 with 5% steps there too). The spinning
    session, when not in use, is estimated by the least of its last three, so one check that finds it fast
    takes it back: its checks, after a spell of one-thread runs, came out 6.4-8.6 ms in 4 of 7 and 3.1-3.4 in
    the others (3.5 in use, the sleeping session 4.6), and a median of three held lone runs on the sleeping
    session for ~450 lone runs, 60% of a benchmark run's; the sleeping session's checks showed no such tail
    (21-60% of lone runs on the slower session in 5 of 13 benchmark processes before, 7-10% in 4 of 4 after;
    the typical p50 alike: benchmarks/results/serving_peers.md, runs 63-74). A switch only adds time, and
    under load every check is slow. Each estimate starts at the median of its session's first ``warmup``
    recorded runs, taken in turns: replaying logged run times (benchmarks/replay_lone_runs.py), estimates
    started at the first run held 5% of server starts on the slower session for most of their lone runs.
    Plain bookkeeping: no clock, no I/O.
    """

    def __init__(self, explore_every: int = 64, step: float = 0.05, warmup: int = 8, checks: int = 3) -> None:
        self._explore_every = explore_every
        self._step = step  # in log(seconds): each sample moves the estimate 5% towards itself
        self._warmup = warmup
        self._first: dict[tuple[int, bool], list[float]] = {}  # (size class, spin) -> its first log(s) samples
        self._log_seconds: dict[tuple[int, bool], float] = {}  # (size class, spin) -> running median of log(s)
        self._recent: dict[tuple[int, bool], deque[float]] = {}  # (size class, spin) -> its last samples
        self._checks = checks
        self._runs: dict[int, int] = {}

    def spin(self, rows: int) -> bool:
        """Whether the next lone run of ``rows`` rows goes to the spinning session."""
        size = rows.bit_length()
        runs = self._runs[size] = self._runs.get(size, 0) + 1
        spinning, sleeping = (len(self._first.get((size, spin), ())) for spin in (True, False))
        if min(spinning, sleeping) < self._warmup:  # measure both sessions first: in turns, spinning first
            return spinning <= sleeping
        faster = self._in_use(size, True)
        explore = runs % self._explore_every in (0, self._explore_every - 1)  # the last two of every block
        return not faster if explore else faster

    def _in_use(self, size: int, spin: bool) -> bool:
        """Whether lone runs of this size class go to session ``spin`` (ties: the spinning one)."""
        spinning, sleeping = self._log_seconds[size, True], self._log_seconds[size, False]
        return spinning <= sleeping if spin else sleeping < spinning

    def record(self, rows: int, spin: bool, seconds: float) -> None:
        key = (rows.bit_length(), spin)
        sample = math.log(max(seconds, 1e-7))
        first = self._first.setdefault(key, [])
        if len(first) < self._warmup:
            # The estimate starts at the median of the first runs, not at the first: a spinning run is slower
            # than a sleeping one in 3 of 10 (the tail), and an estimate started there held lone runs on the
            # slower session for hundreds of runs in 5% of simulated starts (replaying logged run times).
            first.append(sample)
            self._log_seconds[key] = statistics.median(first)
            return
        recent = self._recent.setdefault(key, deque(maxlen=self._checks))
        recent.append(sample)
        if self._checks and (key[0], not spin) in self._log_seconds and not self._in_use(*key):
            # A check of the session not in use: the median of its last three samples, or the least for the
            # spinning session (see the class). Its checks are 64 runs apart, so 5% steps took ~15 checks
            # (~1,000 lone runs) to take back a session that a slow spell had pushed 2x up: the rest of a
            # benchmark run (run 48 in benchmarks/results/serving_peers.md).
            self._log_seconds[key] = min(recent) if spin else statistics.median(recent)
            return
        # A stochastic median: a fixed step up or down, so a preempted run counts as much as a slightly slow one
        # and a lasting change of load shows within ~15 recorded runs per doubling.
        old = self._log_seconds[key]
        self._log_seconds[key] = old + (self._step if sample > old else -self._step)


LOOP_TURNS_AFTER_A_RUN = 5
LOOP_MAX_ROWS = 1024
"""The most rows a run on the loop's thread takes: it saves the same two hand-offs whatever its size, and a
larger one would keep the loop from health checks and cancellations for longer (~6 ms for 1,024 rows of the
benchmark's MMoE on these 2 cores)."""


async def _call(on_loop: bool, executor: Executor, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in ``executor``; or, when ``on_loop``, on the loop's thread, after which the loop turns a
    few times while that run still counts as in flight, so that a call that arrived meanwhile begins now,
    overlaps it, and sends the runs after it to the executor.

    Measured, not derived (benchmarks/results/serving_peers.md, runs 77-79, each beside the server without
    runs on the loop): with no turn the server lost 21% of its requests/s at concurrency 16 and with one 11%;
    with three it answered 334 against 336 req/s and 322 against 325, with five 331 against 325. A turn with
    nothing to do costs microseconds.
    """
    if not on_loop:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    result = fn(*args)
    for _ in range(LOOP_TURNS_AFTER_A_RUN):
        await asyncio.sleep(0)
    return result


class OnnxRanker:
    """A ranking graph -> ``logits`` float32 [B, T]: the package graph (``sparse`` int64 [B, S], ``dense`` float32
    [B, D]; ``GraphRows``) or the factored one (``UserItemRows`` plus the item parts).

    On CPU with ``spinning="alone"`` it keeps two sessions of the graph: a run that has ONNX Runtime to itself
    (no other call in flight in this process, as at low load) goes to one whose threads spin during the run,
    -1 ms at concurrency 1, as long as such runs measure faster there (``LoneRunChooser``); concurrent runs go
    to one whose threads sleep, since spinning threads would take the cores from each other and from gRPC
    (-16% requests/s at concurrency 16 when every run spins), and which divides the intra-op threads among the
    ``inference_threads`` executor threads that run it at once, so that they do not oversubscribe the cores
    (+3 to +6% requests/s at concurrency 16 on 2 cores: one thread per run instead of two).

    A run of at least ``split_rows`` rows, alone or not, is instead scored as ``inference_threads``
    consecutive parts on the sleeping session, handed to the executor at once (rows are scored independently).
    Alone, the parts run at once: ONNX Runtime's own split of one run over the intra-op threads leaves a core
    idle much of the time on these small GEMMs (500 rows of the benchmark MMoE on 2 cores: one run 3.0 ms on
    two spinning threads, 3.6 on one, two halves at once 1.97; the factored graph 2.8, 3.2, 1.96; from ~128
    rows on the halves win), and Rank's p50 at concurrency 1 fell by 0.52-0.74 ms beside the server without
    it. Under load each batch's parts queue for the executor's threads, so the last batch of a burst no longer
    runs on one thread while the other idles (+1-3% requests/s in the bursts at concurrency 16, +0.5-6%
    sustained; benchmarks/results/serving_peers.md, "Runs 90 to 101").
    """

    _in_flight: ClassVar[int] = 0  # ONNX Runtime calls in flight in this process, counted on the event loop by ``infer``
    _started: ClassVar[int] = 0  # ONNX Runtime calls started in this process: did another start while a lone run ran?

    def __init__(
        self,
        path: str,
        settings: RuntimeSettings,
        label: str,
        inputs: Sequence[str] = PACKAGE_INPUTS,
        constants: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """``inputs``: the names a ``ModelInput``'s feeds bring; ``constants``: inputs fed the same arrays on every
        run (the factored graph's item parts: ONNX Runtime reads them in place, no copy on CPU)."""
        self._constants = dict(constants or {})
        available = set(ort.get_available_providers())
        wanted = [p for p in settings.providers if p in available] or ["CPUExecutionProvider"]
        self.requested = wanted[0]  # asked for; ``provider`` (obtained) differs after a fallback
        options = session_options(settings, spin=settings.spinning == "on")
        lone_threads = options.intra_op_num_threads  # what a run alone in the process may use
        if settings.spinning == "alone":
            # On CPU this session takes only concurrent runs (lone ones get the spinning session): they share the
            # cores. Decided before the provider is known (onnxruntime-gpu lists CUDA on machines without one and
            # falls back to CPU); on a GPU the intra-op threads serve only the nodes left on the CPU.
            options.intra_op_num_threads = max(1, options.intra_op_num_threads // settings.inference_threads)
        self.session = self._load(path, options, wanted)
        self.provider = self.session.get_providers()[0]
        self.on_gpu = self.provider in _GPU_PROVIDERS
        names = {i.name for i in self.session.get_inputs()}
        expected = {*inputs, *self._constants}
        if names != expected or "logits" not in {o.name for o in self.session.get_outputs()}:
            raise PackageError(
                f"{path}: expected inputs {'/'.join(sorted(expected))} and output logits, found {sorted(names)}"
            )
        obtained = self.session.get_providers()
        if obtained[0] != wanted[0]:
            logger.warning("%s: %s could not be used, running on %s", label, wanted[0], obtained[0])
        logger.debug("%s: asked for %s, obtained %s", label, wanted, obtained)
        self._alone_session = (
            self._load(path, session_options(settings, spin=True), obtained)
            if settings.spinning == "alone" and not self.on_gpu
            else self.session
        )
        self._chooser = LoneRunChooser() if self._alone_session is not self.session else None
        # Parts only where the sleeping session divides the threads among the executor's (each part its
        # share), and no more than a lone run's threads (``--workers`` gives each process its share of cores).
        self._parts = min(settings.inference_threads, lone_threads) if self._chooser is not None else 1
        self._split_rows = settings.split_rows if self._parts > 1 else 0
        self._last_spin: bool | None = None  # the session of the last run started here (True: the spinning one)

    @property
    def alone_values(self) -> tuple[bool, ...]:
        """The ``alone`` arguments of ``run`` that reach distinct sessions (to check or warm each once)."""
        return (False, True) if self._alone_session is not self.session else (False,)

    def check(self, inputs: ModelInput, expected: np.ndarray, runtime: RuntimeSettings, what: str) -> None:
        """Every session answers ``expected`` for ``inputs`` within the golden tolerances (a load-time check).

        Raises:
            PackageError: naming ``what`` and the largest difference.
        """
        for alone in self.alone_values:  # each session (two when spinning is "alone")
            try:
                actual = self.run(inputs, alone)
            except Exception as exc:  # ORT errors are untyped
                raise PackageError(f"{what}: the graph fails on these inputs: {exc}") from exc
            if actual.shape != expected.shape or not np.allclose(
                actual, expected, rtol=runtime.golden_rtol, atol=runtime.golden_atol
            ):
                worst = float(np.max(np.abs(actual - expected))) if actual.shape == expected.shape else float("nan")
                raise PackageError(
                    f"{what}: outputs differ (shape {actual.shape} vs {expected.shape}, max |diff| {worst})"
                )

    @staticmethod
    def _load(path: str, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors for corrupt graphs
            raise PackageError(f"{path}: ONNX Runtime cannot load the graph: {exc}") from exc

    async def infer(
        self, inputs: ModelInput, executor: Executor, traffic: SequentialTraffic | None = None
    ) -> np.ndarray:
        """Score a batch in ``executor`` so the event loop keeps serving, or, when it is alone in the process
        and ``traffic`` (the server's calls) arrives one call at a time, on the loop's thread (no hand-offs).

        ORT's own ``run_async`` was measured against this: it runs the whole graph on one pool thread,
        which cost 35% of the throughput at concurrency 16 on 2 cores, and gained nothing at concurrency 1.
        """
        alone = OnnxRanker._in_flight == 0
        on_loop = alone and len(inputs) <= LOOP_MAX_ROWS and traffic is not None and traffic.sequential
        if on_loop:
            LOOP_RUNS.inc()
        OnnxRanker._in_flight += 1
        OnnxRanker._started += 1
        started = OnnxRanker._started
        try:
            if self._split_rows and len(inputs) >= self._split_rows:
                if alone:
                    _SPLIT_RUNS.inc()
                self._last_spin = False  # the parts run on the sleeping session
                return await self._run_in_parts(inputs, on_loop, executor)
            if not alone or self._chooser is None:
                self._last_spin = False  # concurrent runs go to the sleeping session
                return await _call(on_loop, executor, self.run, inputs, alone)
            spin = self._chooser.spin(len(inputs))
            _LONE_RUNS[spin].inc()
            warm, self._last_spin = spin == self._last_spin, spin
            logits, seconds = await _call(on_loop, executor, self._timed_run, inputs, spin)
            # Only a run that stayed alone and followed one on the same session compares the sessions: one that
            # others joined shared the cores with their requests, and one after a switch measures the switch.
            if warm and OnnxRanker._started == started:
                self._chooser.record(len(inputs), spin, seconds)
            return logits
        finally:
            OnnxRanker._in_flight -= 1

    async def _run_in_parts(self, inputs: ModelInput, on_loop: bool, executor: Executor) -> np.ndarray:
        """``inputs`` as consecutive parts handed over at once: the first where ``on_loop`` says, the rest to
        ``executor`` (a lone run's parts find its threads free; under load they queue there)."""
        first, *rest = inputs.split(-(-len(inputs) // self._parts))
        loop = asyncio.get_running_loop()
        others = [loop.run_in_executor(executor, self.run, part) for part in rest]
        return np.concatenate(await asyncio.gather(_call(on_loop, executor, self.run, first), *others))

    def _timed_run(self, inputs: ModelInput, alone: bool) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        logits = self.run(inputs, alone)
        return logits, time.perf_counter() - started

    def run(self, inputs: ModelInput, alone: bool = False) -> np.ndarray:
        """Score a batch; blocks (call it from an executor thread, never on the event loop).

        ``alone``: nothing else is running in ONNX Runtime, so the spinning session may take the cores.
        """
        feeds = inputs.feeds()
        if self._constants:
            feeds |= self._constants
        if not self.on_gpu:
            session = self._alone_session if alone else self.session
            return session.run(["logits"], feeds)[0]
        # GPU: bind inputs once per call and let ORT allocate the output on the device, copying back once.
        binding = self.session.io_binding()
        for name, values in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(values))
        binding.bind_output("logits", "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]
