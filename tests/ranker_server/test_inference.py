"""ONNX Runtime sessions: provider fallback, thread options, and the IO-binding path on GPU."""

from __future__ import annotations

import asyncio
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from ranker_server.config import RuntimeSettings
from ranker_server.errors import PackageError
from ranker_server.inference import GraphRows, LoneRunChooser, OnnxRanker, session_options
from ranker_server.traffic import SequentialTraffic


def golden(repository: Path) -> dict[str, np.ndarray]:
    return dict(np.load(repository / "tiny" / "1" / "golden.npz"))


def test_cpu_session_reports_its_provider_and_matches_golden(repository: Path) -> None:
    runner = OnnxRanker(
        str(repository / "tiny" / "1" / "model.onnx"),
        RuntimeSettings(providers=("CPUExecutionProvider",)),
        "t",
    )
    assert runner.provider == "CPUExecutionProvider" and not runner.on_gpu
    data = golden(repository)
    np.testing.assert_allclose(
        runner.run(GraphRows(data["sparse"], data["dense"])), data["logits"], rtol=1e-4, atol=1e-5
    )


def test_session_options_follow_settings() -> None:
    options = session_options(RuntimeSettings(intra_op_threads=3, inter_op_threads=2))
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 2)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_options(RuntimeSettings(), spin=True)
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    # Never between runs: the threads stop as soon as the last run returns.
    assert spinning.get_session_config_entry("session.force_spinning_stop") == "1"


class _Recording:
    """Wraps a session and notes, per call, whether its threads spin."""

    def __init__(self, session, calls: list[str]) -> None:
        spins = session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        self.session, self.calls, self.name = session, calls, "spin" if spins == "1" else "sleep"

    def run(self, outputs, feeds):
        self.calls.append(self.name)
        return self.session.run(outputs, feeds)


@pytest.mark.parametrize(
    ("spinning", "expected"),
    [("alone", ["spin", "sleep", "sleep"]), ("off", ["sleep"] * 3), ("on", ["spin"] * 3)],
)
async def test_a_lone_run_spins_and_concurrent_runs_do_not(repository: Path, spinning: str, expected) -> None:
    runner = OnnxRanker(str(repository / "tiny" / "1" / "model.onnx"), RuntimeSettings(spinning=spinning), "t")
    assert runner.alone_values == ((False, True) if spinning == "alone" else (False,))  # checked/warmed once each
    calls: list[str] = []
    runner.session = _Recording(runner.session, calls)
    runner._alone_session = _Recording(runner._alone_session, calls)
    if runner._chooser is not None:  # lone runs spin while spinning measures faster: say it always does
        runner._chooser.spin = lambda rows: True
    data = golden(repository)
    with ThreadPoolExecutor(3) as executor:
        await runner.infer(GraphRows(data["sparse"], data["dense"]), executor)
        assert calls == expected[:1]  # nothing else in flight: alone
        calls.clear()
        results = await asyncio.gather(*(runner.infer(GraphRows(data["sparse"], data["dense"]), executor) for _ in range(3)))
    assert calls == expected  # only the first of three concurrent calls started alone
    for logits in results:
        np.testing.assert_allclose(logits, data["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("spinning", "concurrent", "lone"), [("alone", 2, 4), ("off", 4, 4), ("on", 4, 4)])
def test_concurrent_runs_share_the_cores_among_the_executor_threads(
    repository: Path, spinning: str, concurrent: int, lone: int
) -> None:
    settings = RuntimeSettings(spinning=spinning, intra_op_threads=4, inference_threads=2)
    runner = OnnxRanker(str(repository / "tiny" / "1" / "model.onnx"), settings, "t")
    assert runner.session.get_session_options().intra_op_num_threads == concurrent
    assert runner._alone_session.get_session_options().intra_op_num_threads == lone


LONE_RUNS, SESSIONS = "mtrank_inference_lone_runs_total", ("spinning", "sleeping")


class _Parts:
    """Stands in for ``OnnxRanker.run`` and notes each call's rows and thread; while ``barrier`` is set,
    ``meet`` calls must be in it at once (calls one after another time out)."""

    def __init__(self, run, meet: int) -> None:
        self._run, self.calls = run, []
        self.barrier = threading.Barrier(meet, timeout=10) if meet > 1 else None

    def __call__(self, inputs, alone: bool = False):
        self.calls.append((len(inputs), alone, threading.get_ident()))
        if self.barrier is not None:
            self.barrier.wait()
        return self._run(inputs, alone)


def _rows(repository: Path, n: int) -> tuple[GraphRows, np.ndarray]:
    """``n`` golden rows (repeated) and their logits."""
    data = golden(repository)
    index = np.arange(n) % len(data["sparse"])
    return GraphRows(data["sparse"][index], data["dense"][index]), data["logits"][index]


@pytest.mark.parametrize("on_loop", [False, True])
async def test_runs_of_many_rows_are_scored_in_parts(repository: Path, on_loop: bool) -> None:
    settings = RuntimeSettings(
        providers=("CPUExecutionProvider",), split_rows=8, inference_threads=2, intra_op_threads=2
    )
    runner = OnnxRanker(str(repository / "tiny" / "1" / "model.onnx"), settings, "t")
    runner.run = parts = _Parts(runner.run, meet=2)
    rows, expected = _rows(repository, 9)
    split = REGISTRY.get_sample_value(LONE_RUNS, {"session": "split"}) or 0
    traffic = SequentialTraffic(min_gap_s=0.0, streak=0) if on_loop else None  # every call "one at a time"
    with ThreadPoolExecutor(2) as executor:
        logits = await runner.infer(rows, executor, traffic)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)  # the parts in order
        assert sorted((n, alone) for n, alone, _ in parts.calls) == [(4, False), (5, False)]  # not spinning
        threads = {thread for *_, thread in parts.calls}
        assert len(threads) == 2 and (threading.get_ident() in threads) == on_loop
        assert REGISTRY.get_sample_value(LONE_RUNS, {"session": "split"}) - split == 1
        parts.calls.clear()
        parts.barrier = None
        await runner.infer(_rows(repository, 7)[0], executor)  # fewer rows than split_rows: one run
        assert [n for n, *_ in parts.calls] == [7]
        parts.calls.clear()
        await asyncio.gather(*(runner.infer(rows, executor) for _ in range(3)))
    # Concurrent runs are split too (their parts queue for the executor's threads); lone ones are counted.
    assert sorted(n for n, *_ in parts.calls) == [4, 4, 4, 5, 5, 5]
    assert REGISTRY.get_sample_value(LONE_RUNS, {"session": "split"}) - split == 2


@pytest.mark.parametrize(
    ("spinning", "split_rows", "threads"), [("alone", 0, 2), ("off", 8, 2), ("on", 8, 2), ("alone", 8, 1)]
)
async def test_runs_are_not_split_when_told_not_to_or_without_threads_to_divide(
    repository: Path, spinning: str, split_rows: int, threads: int
) -> None:
    settings = RuntimeSettings(
        providers=("CPUExecutionProvider",),
        spinning=spinning,
        split_rows=split_rows,
        intra_op_threads=threads,
    )
    runner = OnnxRanker(str(repository / "tiny" / "1" / "model.onnx"), settings, "t")
    runner.run = parts = _Parts(runner.run, meet=1)
    if runner._chooser is not None:
        runner._chooser.spin = lambda rows: False
    runner._timed_run = lambda inputs, alone: (parts(inputs, alone), 0.001)
    rows, expected = _rows(repository, 9)
    with ThreadPoolExecutor(2) as executor:
        np.testing.assert_allclose(await runner.infer(rows, executor), expected, rtol=1e-4, atol=1e-5)
    assert [n for n, *_ in parts.calls] == [9]


async def test_lone_runs_follow_the_chooser_and_only_runs_after_one_on_the_same_session_count(
    repository: Path,
) -> None:
    runner = OnnxRanker(str(repository / "tiny" / "1" / "model.onnx"), RuntimeSettings(spinning="alone"), "t")
    calls: list[str] = []
    runner.session = _Recording(runner.session, calls)
    runner._alone_session = _Recording(runner._alone_session, calls)
    data = golden(repository)
    size = len(data["sparse"]).bit_length()
    recorded = []
    counted = {session: REGISTRY.get_sample_value(LONE_RUNS, {"session": session}) or 0 for session in SESSIONS}
    with ThreadPoolExecutor(2) as executor:
        for _ in range(4):
            await runner.infer(GraphRows(data["sparse"], data["dense"]), executor)
            recorded.append(set(runner._chooser._log_seconds))
    assert calls == ["spin", "spin", "sleep", "sleep"], "each session is measured before the chooser compares"
    for session in SESSIONS:  # mtrank_inference_lone_runs_total says where lone runs went
        assert REGISTRY.get_sample_value(LONE_RUNS, {"session": session}) - counted[session] == 2
    # The first run and the first after a switch find a cold session: they are not compared.
    assert recorded == [set(), {(size, True)}, {(size, True)}, {(size, True), (size, False)}]


async def test_a_lone_run_that_others_joined_does_not_count(repository: Path) -> None:
    """A burst (the first call alone, the rest arriving during its run) must not teach the chooser anything."""
    runner = OnnxRanker(str(repository / "tiny" / "1" / "model.onnx"), RuntimeSettings(spinning="alone"), "t")
    runner._chooser.spin = lambda rows: True
    data = golden(repository)
    with ThreadPoolExecutor(3) as executor:
        for _ in range(2):  # the second, warm, is recorded
            await runner.infer(GraphRows(data["sparse"], data["dense"]), executor)
        before = dict(runner._chooser._log_seconds)
        assert before
        await asyncio.gather(*(runner.infer(GraphRows(data["sparse"], data["dense"]), executor) for _ in range(3)))
    assert runner._chooser._log_seconds == before


def test_the_chooser_prefers_the_faster_session_and_keeps_checking_the_other() -> None:
    chooser = LoneRunChooser(explore_every=4, warmup=1)
    assert chooser.spin(500) is True
    chooser.record(500, True, 0.008)  # spinning threads waiting for busy cores
    assert chooser.spin(500) is False
    chooser.record(500, False, 0.004)
    picks = [chooser.spin(500) for _ in range(8)]  # runs 3-10 of this size class
    assert picks == [True, True, False, False, True, True, False, False], "the last two of each 4 re-check"
    for _ in range(20):  # the load went away: spinning is faster again (20 x 5% > the 2x it was behind)
        chooser.record(500, True, 0.002)
    assert [chooser.spin(500) for _ in range(4)].count(True) >= 2
    assert chooser.spin(3) is True, "another batch-size class is measured on its own"


def test_one_slow_run_does_not_outvote_many_fast_ones() -> None:
    chooser = LoneRunChooser(explore_every=16, warmup=1)
    chooser.record(100, True, 0.002)
    chooser.record(100, False, 0.003)
    for _ in range(5):
        chooser.record(100, True, 0.002)
    chooser.record(100, True, 0.050)  # preempted once
    picks = [chooser.spin(100) for _ in range(16)]
    assert picks[:14] == [True] * 14 and picks[14:] == [False, False], picks  # two in a row re-check sleeping


def test_an_unlucky_first_run_does_not_hold_lone_runs_on_the_slower_session() -> None:
    """Spinning: 2.3 ms typically, but its first measured run hit the tail (7 ms); sleeping: 3.4 ms. An estimate
    started at the first run sent the next 64 lone runs but two to the sleeping session."""
    chooser = LoneRunChooser(explore_every=64, warmup=5)
    spinning = iter([0.007, 0.0023, 0.0024, 0.0022, 0.0023])
    picks = []
    for _ in range(10):  # the warm-up: five of each, in turns
        spin = chooser.spin(500)
        picks.append(spin)
        chooser.record(500, spin, next(spinning) if spin else 0.0034)
    assert picks == [True, False] * 5
    assert [chooser.spin(500) for _ in range(60)].count(True) >= 58


def test_a_heavy_tail_does_not_hide_the_faster_median() -> None:
    """Spinning: 2.8 ms in two runs of three, 8.4 ms in the third; sleeping: always 3.6 ms. A lone request's
    typical time is 2.8 ms spinning: the chooser must keep spinning (a running mean drifted to ~4 ms)."""
    chooser = LoneRunChooser()
    for i in range(60):
        chooser.record(500, True, 0.0084 if i % 3 == 2 else 0.0028)
        chooser.record(500, False, 0.0036)
    assert chooser.spin(500) is True


def test_a_session_left_in_a_slow_spell_is_taken_back_within_three_checks() -> None:
    """A slow spell pushed the spinning session's estimate 4x up and lone runs went to the sleeping one; then
    spinning is fast again. Its checks (64 runs apart) moved it 5% each, ~30 checks (~2,000 lone runs) to come
    back: a benchmark run's whole remaining concurrency-1 calls (run 48)."""
    chooser = LoneRunChooser(warmup=1)
    chooser.record(500, True, 0.0023)
    chooser.record(500, False, 0.0034)
    for _ in range(30):  # the slow spell, while lone runs still went to the spinning session
        chooser.record(500, True, 0.0100)
    last, picks = None, []
    for _ in range(64 * 4):  # the spell is over: spinning 2.3 ms again, sleeping 3.4 ms
        spin = chooser.spin(500)
        if spin == last:  # as OnnxRanker.infer: the first run after a switch is not recorded
            chooser.record(500, spin, 0.0023 if spin else 0.0034)
        last = spin
        picks.append(spin)
    assert picks[-64:].count(True) >= 60, "still on the sleeping session after four checks"


def test_a_spinning_check_slowed_by_the_switch_does_not_hold_lone_runs_on_the_sleeping_session() -> None:
    """Logged in bench_serving_peers' mixed traffic (run 63): after a slow spell moved lone runs to the
    sleeping session (4.6 ms), checks of the spinning one came out 6.6, 3.4, 7.8, 6.4, 3.1, 8.6, 3.2 ms where
    its runs in use took 3.5. A median of three took it back at the seventh check, ~450 lone runs later."""
    chooser = LoneRunChooser(warmup=1)
    chooser.record(500, True, 0.0035)
    chooser.record(500, False, 0.0046)
    for _ in range(20):  # the slow spell
        chooser.record(500, True, 0.0060)
    checks = itertools.cycle([0.0066, 0.0034, 0.0078, 0.0064, 0.0031, 0.0086, 0.0032])
    picks: list[bool] = []
    for _ in range(64 * 8):
        spin = chooser.spin(500)
        on_sleeping = picks[-10:].count(False) > 5  # a spinning run now is a check
        if picks and spin == picks[-1]:  # as OnnxRanker.infer: the first run after a switch is not recorded
            chooser.record(500, spin, (next(checks) if on_sleeping else 0.0035) if spin else 0.0046)
        picks.append(spin)
    assert picks[:64].count(False) > 50, "the spell moved lone runs to the sleeping session"
    assert picks[192:].count(True) > 0.9 * len(picks[192:]), "a fast check takes the spinning one back"


def test_a_graph_with_other_inputs_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(PackageError, match="cannot load"):
        OnnxRanker(str(bad), RuntimeSettings(), "bad")


@pytest.mark.gpu
def test_cuda_io_binding_matches_cpu(repository: Path) -> None:
    path = str(repository / "tiny" / "1" / "model.onnx")
    gpu = OnnxRanker(path, RuntimeSettings(), "gpu")
    if not gpu.on_gpu:
        pytest.skip(f"CUDA not usable here (obtained {gpu.provider})")
    cpu = OnnxRanker(path, RuntimeSettings(providers=("CPUExecutionProvider",)), "cpu")
    data = golden(repository)
    np.testing.assert_allclose(
        gpu.run(GraphRows(data["sparse"], data["dense"])), cpu.run(GraphRows(data["sparse"], data["dense"])), rtol=1e-3, atol=1e-4
    )


async def test_infer_runs_off_the_event_loop_and_matches_run(repository: Path) -> None:
    runner = OnnxRanker(str(repository / "tiny" / "1" / "model.onnx"), RuntimeSettings(), "t")
    data = golden(repository)
    with ThreadPoolExecutor(2) as executor:
        scored = await asyncio.gather(
            *(runner.infer(GraphRows(data["sparse"], data["dense"]), executor) for _ in range(4))
        )
    for logits in scored:
        np.testing.assert_allclose(logits, runner.run(GraphRows(data["sparse"], data["dense"])), rtol=1e-6)
