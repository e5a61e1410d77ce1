"""GPU check of the serving path (driven by benchmarks/gpu_check.sh, which installs and skips).

With ``--provider cuda`` every step asserts that ONNX Runtime's CUDA provider really runs the graph, since
onnxruntime-gpu falls back to CPU silently when a CUDA library is missing:
  1. the session's providers list CUDAExecutionProvider first, and an ORT profile of a run shows every
     graph node executed by it (a run, not just the session's claim);
  2. parity: CUDA outputs (plain run and IO binding) match the CPU provider's within rtol 1e-3, atol 1e-4;
  3. raw ORT with IO binding (inputs bound from host memory, output allocated on the device, as the ranker
     does) at batch 1/100/500 rows and concurrency 1/16/64 (threads sharing the session);
  4. the ranker end to end (``python -m ranker_server``: Rank over gRPC, 1/100/500 candidates, concurrency
     1/16/64), after its own metric ``mtrank_execution_provider`` confirms the provider it obtained.
``--provider cpu`` runs the very same code with CPUExecutionProvider (the CPU dry run that tests exercise on
machines without a GPU). Writes one markdown results file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

import bench_ranker as br  # noqa: E402 (puts the repository root on sys.path too)
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from ranker_server.config import RuntimeSettings  # noqa: E402
from ranker_server.inference import GraphRows, OnnxRanker, session_options  # noqa: E402

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def providers_for(provider: str) -> tuple[str, ...]:
    """The provider asked for, then CPU (as the ranker asks), without a duplicate for the CPU run."""
    return tuple(dict.fromkeys((PROVIDERS[provider], "CPUExecutionProvider")))


class CheckFailed(AssertionError):
    """A check did not hold: the run must stop with a clear message, not report numbers."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def node_providers(session_factory: Callable[[ort.SessionOptions], ort.InferenceSession], feeds: dict) -> dict:
    """Which provider ran each node in a profiled run: {provider: node count}."""
    options = session_options(RuntimeSettings(intra_op_threads=1))
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = session_factory(options)
        session.run(["logits"], feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    counts: dict[str, int] = {}
    for event in events:
        provider = event.get("args", {}).get("provider")
        if event.get("cat") == "Node" and provider:
            counts[provider] = counts.get(provider, 0) + 1
    return counts


def provider_checks(model_path: Path, provider: str, feeds: dict) -> list[str]:
    """Steps 1 and 2; returns the report lines. Raises CheckFailed."""
    wanted = PROVIDERS[provider]
    runtime = RuntimeSettings(providers=providers_for(provider), spinning="off")
    runner = OnnxRanker(str(model_path), runtime, "gpu-check")
    obtained = runner.session.get_providers()
    check(obtained[0] == wanted, f"asked for {wanted}, ONNX Runtime gave {obtained} (a CUDA library is missing?)")
    check(runner.on_gpu == (provider == "cuda"), f"the ranker's runner says on_gpu={runner.on_gpu}")
    counts = node_providers(
        lambda options: ort.InferenceSession(str(model_path), options, providers=list(providers_for(provider))),
        feeds,
    )
    check(counts.get(wanted, 0) > 0, f"no node ran on {wanted} in a profiled run: {counts}")
    lines = [f"Session providers: {obtained}; nodes by provider in a profiled run: {counts}"]
    off = {p: n for p, n in counts.items() if p != wanted}
    if off:  # shape ops may stay on CPU by design; say so instead of hiding it
        lines.append(f"Nodes not on {wanted}: {off} (ORT places some shape/int64 ops on CPU by design)")
    cpu = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    plain = runner.session.run(["logits"], feeds)[0]
    bound = runner.run(GraphRows(feeds["sparse"], feeds["dense"]))  # the ranker's path: IO binding on GPU
    path = "the ranker's run: IO binding" if runner.on_gpu else "the ranker's run"
    for name, output in (("session.run", plain), (path, bound)):
        worst = float(np.max(np.abs(output - cpu)))
        check(np.allclose(output, cpu, rtol=1e-3, atol=1e-4), f"parity {name} vs CPU: max |diff| {worst}")
        lines.append(f"Parity with CPUExecutionProvider, {len(cpu)} rows, {name}: max |diff| {worst:.2e} (rtol 1e-3, atol 1e-4)")
    return lines


def raw_ort(model_path: Path, provider: str, batch: int, concurrency: int, calls: int, package: Path) -> br.Result:
    """Raw ORT through the ranker's runner (IO binding on GPU): ``calls`` runs from ``concurrency`` threads."""
    runtime = RuntimeSettings(providers=providers_for(provider), spinning="off")
    runner = OnnxRanker(str(model_path), runtime, "gpu-check")
    _, sparse, dense = br.request_rows(package, batch, np.random.default_rng(batch))
    for _ in range(5):
        runner.run(GraphRows(sparse, dense))
    result = br.Result(f"raw ORT, batch {batch}, concurrency {concurrency}")
    lock, remaining = threading.Lock(), [calls]

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            runner.run(GraphRows(sparse, dense))
            elapsed = time.perf_counter() - started
            with lock:
                result.latencies_s.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - started
    return result


def server_provider(metrics_port: int) -> list[str]:
    """The providers the ranker's model versions obtained, from its ``mtrank_execution_provider`` metric."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return [
        line.split('provider="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("mtrank_execution_provider{") and line.endswith(" 1.0")
    ]


async def ranker_rows(target: str, package: Path, batches: tuple[int, ...], concurrencies: tuple[int, ...], calls: int):
    from grpc import aio

    from proto import ranking_pb2_grpc

    results = []
    async with aio.insecure_channel(target) as channel:
        stub = ranking_pb2_grpc.RankerStub(channel)
        for batch in batches:
            ids, _, _ = br.request_rows(package, batch, np.random.default_rng(batch))
            request = br.rank_request(ids)
            await br.server_round([stub.Rank], request, br.Result("warm-up"), 4, 20)
            for concurrency in concurrencies:
                result = br.Result(f"ranker Rank, {batch} candidates, concurrency {concurrency}")
                await br.server_round([stub.Rank], request, result, concurrency, max(calls, concurrency * 4))
                results.append((result, batch))
    return results


def table(title: str, results: list[tuple[br.Result, int]]) -> list[str]:
    """One row per (result, rows per call)."""
    lines = [f"### {title}", "", "| measurement | p50 ms | p99 ms | req/s | rows/s |", "|---|---:|---:|---:|---:|"]
    for r, rows in results:
        lines.append(f"| {r.name} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.rps:.0f} | {r.rps * rows:,.0f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda")
    parser.add_argument("--out", type=Path, required=True, help="the results file (markdown)")
    parser.add_argument("--calls", type=int, default=400, help="timed calls per measurement")
    parser.add_argument("--quick", action="store_true", help="batches 1/100, concurrency 1/4, 40 calls: checks the path")
    args = parser.parse_args(argv)
    batches, concurrencies = ((1, 100), (1, 4)) if args.quick else ((1, 100, 500), (1, 16, 64))
    calls = 40 if args.quick else args.calls
    wanted = PROVIDERS[args.provider]
    lines = [
        f"# GPU check ({'CPU dry run: ' if args.provider == 'cpu' else ''}{wanted})",
        "",
        f"Command: `benchmarks/gpu_check.sh{' --cpu-dry-run' if args.provider == 'cpu' else ''}"
        f"{' --quick' if args.quick else ''}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__}, "
        f"available providers {ort.get_available_providers()}",
        f"GPU: {gpu_name()}",
        f"Model: bench_ranker's MMoE (996,911 parameters, 3 tasks); timed calls per row: {calls}.",
        f"uptime before: {br.uptime()}",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        package = br.write_package(br.build_model(), Path(tmp))
        model_path = package / "model.onnx"
        _, sparse, dense = br.request_rows(package, 500, np.random.default_rng(0))
        try:
            lines += provider_checks(model_path, args.provider, {"sparse": sparse, "dense": dense})
            lines.append("")
            raw = [(raw_ort(model_path, args.provider, b, c, calls, package), b) for b in batches for c in concurrencies]
            lines += table(f"Raw ONNX Runtime ({wanted}{', IO binding' if args.provider == 'cuda' else ''})", raw)
            metrics_port = br.free_port()
            if args.provider == "cpu":  # the dry run stays on CPU even where a GPU exists
                os.environ["CUDA_VISIBLE_DEVICES"] = ""
            proc, target = br.start_server(Path(tmp), 0, metrics_port, [])
            try:
                obtained = server_provider(metrics_port)
                check(obtained == [wanted], f"the ranker's model obtained {obtained}, expected [{wanted}]")
                lines.append(f"Ranker: its model version obtained {obtained[0]} (metric mtrank_execution_provider).")
                lines.append("")
                served = asyncio.run(ranker_rows(target, package, batches, concurrencies, calls))
            finally:
                proc.terminate()
                proc.wait(30)
            lines += table("Ranker end to end (Rank over gRPC, top 100)", served)
        except CheckFailed as exc:
            lines += ["", f"**CHECK FAILED: {exc}**"]
            args.out.write_text("\n".join(lines) + "\n")
            print("\n".join(lines))
            print(f"gpu_check: FAILED: {exc}", file=sys.stderr)
            return 1
    lines.append(f"uptime after: {br.uptime()}")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"gpu_check: all checks passed on {wanted}; results in {args.out}")
    return 0


def gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip() or "none"  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "none (no nvidia-smi)"


if __name__ == "__main__":
    sys.exit(main())
