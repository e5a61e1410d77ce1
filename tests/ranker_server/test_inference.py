"""ONNX Runtime sessions: provider fallback, thread options, and the IO-binding path on GPU."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ranker_server.config import RuntimeSettings
from ranker_server.errors import PackageError
from ranker_server.inference import OnnxRanker, session_options


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
        runner.run(data["sparse"], data["dense"]), data["logits"], rtol=1e-4, atol=1e-5
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
    data = golden(repository)
    with ThreadPoolExecutor(3) as executor:
        await runner.infer(data["sparse"], data["dense"], executor)
        assert calls == expected[:1]  # nothing else in flight: alone
        calls.clear()
        results = await asyncio.gather(*(runner.infer(data["sparse"], data["dense"], executor) for _ in range(3)))
    assert calls == expected  # only the first of three concurrent calls started alone
    for logits in results:
        np.testing.assert_allclose(logits, data["logits"], rtol=1e-4, atol=1e-5)


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
        gpu.run(data["sparse"], data["dense"]), cpu.run(data["sparse"], data["dense"]), rtol=1e-3, atol=1e-4
    )


async def test_infer_runs_off_the_event_loop_and_matches_run(repository: Path) -> None:
    runner = OnnxRanker(str(repository / "tiny" / "1" / "model.onnx"), RuntimeSettings(), "t")
    data = golden(repository)
    with ThreadPoolExecutor(2) as executor:
        scored = await asyncio.gather(
            *(runner.infer(data["sparse"], data["dense"], executor) for _ in range(4))
        )
    for logits in scored:
        np.testing.assert_allclose(logits, runner.run(data["sparse"], data["dense"]), rtol=1e-6)
