"""Ranker serving cost against its floor, measured side by side on one machine with one model.

A ~1M-parameter MMoE (``models.create_model("mmoe")``, 3 tasks) scores 500 candidates per request:
  (a) raw ONNX Runtime in-process (session.run on ready arrays: the floor), for each thread setting tried;
  (b) PyTorch eager (torch.no_grad), with 1 thread and with the ORT thread count;
  (c) the ranker server end to end (``python -m ranker_server`` in its own process) through a grpc.aio
      client at concurrency 1 and 16.
Prints p50/p99 latency, requests/s and the ratios against the targets:
  server p50 (concurrency 1) <= 1.3 x raw ORT p50 + 1 ms;  server req/s at concurrency 16 >= 90% of raw ORT req/s.

Run:  .venv/bin/python benchmarks/bench_ranker.py [--requests 400] [--out benchmarks/results/ranker.md]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# PyTorch's OpenMP threads otherwise keep spinning after each eager call and steal the cores from the
# measurements that follow them (ORT, the server): on a shared machine that distorts every other row.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import create_model  # noqa: E402
from models.layers import FeatureSpec  # noqa: E402

USER_VOCABS = (20_000, 200)  # user id, user segment
ITEM_VOCABS = (24_000, 500)  # item id, item category
USER_DENSE, ITEM_DENSE = 4, 4
TASKS = (
    {"name": "click", "type": "binary"},
    {"name": "like", "type": "binary"},
    {"name": "watch", "type": "regression"},
)
N_ITEMS = 20_000


class GraphInputs(torch.nn.Module):
    """Positional (sparse, dense) -> logits, the ranking graph contract, around the dict-input model."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.model({"sparse": sparse, "dense": dense})


def build_model() -> torch.nn.Module:
    features = FeatureSpec(
        sparse_vocab_sizes=USER_VOCABS + ITEM_VOCABS,
        n_dense=USER_DENSE + ITEM_DENSE,
        embedding_dim=16,
        sparse_names=("user_id", "user_segment", "item_id", "item_category"),
    )
    torch.manual_seed(0)
    model = create_model(
        "mmoe",
        features=features,
        tasks=list(TASKS),
        n_experts=4,
        expert_dims=(256, 128),
        tower_dims=(128, 64),
    )
    return model.eval()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_package(model: torch.nn.Module, root: Path, name: str = "bench-mmoe", version: str = "1") -> Path:
    """Export ``model`` as a ranking package (docs/contracts.md) under ``root/name/version``."""
    path = root / name / version
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vocabs = USER_VOCABS + ITEM_VOCABS
    sparse = np.stack([rng.integers(0, v, 64) for v in vocabs], axis=1).astype(np.int64)
    dense = rng.normal(size=(64, USER_DENSE + ITEM_DENSE)).astype(np.float32)
    wrapped = GraphInputs(model).eval()
    torch.onnx.export(
        wrapped,
        (torch.from_numpy(sparse), torch.from_numpy(dense)),
        str(path / "model.onnx"),
        input_names=["sparse", "dense"],
        output_names=["logits"],
        dynamic_axes={"sparse": {0: "batch"}, "dense": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    with torch.no_grad():
        logits = wrapped(torch.from_numpy(sparse), torch.from_numpy(dense)).numpy()
    np.savez(path / "golden.npz", sparse=sparse, dense=dense, logits=logits)
    ids = np.arange(1, N_ITEMS + 1, dtype=np.int64) * 7
    item_sparse = np.stack([rng.integers(1, v, N_ITEMS) for v in ITEM_VOCABS], axis=1).astype(np.int64)
    item_dense = rng.normal(size=(N_ITEMS, ITEM_DENSE)).astype(np.float32)
    np.savez(path / "item_features.npz", ids=ids, sparse=item_sparse, dense=item_dense)
    side = ["user"] * len(USER_VOCABS) + ["item"] * len(ITEM_VOCABS)
    names = ("user_id", "user_segment", "item_id", "item_category")
    manifest = {
        "format_version": 1,
        "kind": "ranking",
        "name": name,
        "version": version,
        "family": "mmoe",
        "tasks": list(TASKS),
        "inputs": [
            {"name": "sparse", "dtype": "int64", "shape": [-1, len(vocabs)]},
            {"name": "dense", "dtype": "float32", "shape": [-1, USER_DENSE + ITEM_DENSE]},
        ],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, len(TASKS)]}],
        "features": {
            "sparse": [
                {"name": n, "vocab_size": v, "side": s} for n, v, s in zip(names, vocabs, side, strict=True)
            ],
            "dense": [{"name": f"user_dense_{i}", "side": "user"} for i in range(USER_DENSE)]
            + [{"name": f"item_dense_{i}", "side": "item"} for i in range(ITEM_DENSE)],
        },
        "onnx_sha256": _sha(path / "model.onnx"),
        "files": {f: _sha(path / f) for f in ("golden.npz", "item_features.npz")},
        "training_config": {"benchmark": True},
        "metrics": {},
        "created_at": "2026-11-23T00:00:00Z",
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


@dataclass
class Result:
    name: str
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 50) * 1e3)

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 99) * 1e3)

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.wall_s

    def row(self) -> str:
        return f"| {self.name} | {self.p50_ms:.3f} | {self.p99_ms:.3f} | {self.rps:.0f} |"


def request_rows(
    package: Path, candidates: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A request's candidate ids and the [N, S] / [N, D] rows the server would build for it."""
    items = np.load(package / "item_features.npz")
    pick = rng.choice(len(items["ids"]), candidates, replace=False)
    user_sparse = np.array([123, 7], np.int64)
    user_dense = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
    sparse = np.hstack([np.tile(user_sparse, (candidates, 1)), items["sparse"][pick]])
    dense = np.hstack([np.tile(user_dense, (candidates, 1)), items["dense"][pick]]).astype(np.float32)
    return items["ids"][pick], sparse, dense


def timed(result: Result, fn: Callable[[], object], n: int) -> None:
    """Call ``fn`` ``n`` times, adding each latency and the wall time to ``result``."""
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        result.latencies_s.append(time.perf_counter() - t)
    result.wall_s += time.perf_counter() - start


def ort_session(model_path: Path, threads: int, spin: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


async def server_round(stub, request, result: Result, concurrency: int, n: int) -> None:
    """``n`` Rank calls spread over ``concurrency`` concurrent callers on one channel."""
    remaining = n

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            await stub.Rank(request, timeout=30)
            result.latencies_s.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    result.wall_s += time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(repository: Path, threads: int, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    config = repository / "experiments.yaml"
    config.write_text(
        "version: 1\ndefaults:\n  retrieval: {model_name: none, model_version: '1'}\n"
        "  ranking: {model_name: bench-mmoe, model_version: '1', task_weights: {click: 1.0, like: 0.5, watch: 0.1}}\n"
        "experiments: []\n"
    )
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ranker_server",
        "--repository",
        str(repository),
        "--experiments",
        str(config),
    ]
    command += ["--port", str(port), "--log-level", "WARNING", "--not-serving-delay", "0"]
    command += ["--intra-op-threads", str(threads), *extra]
    proc = subprocess.Popen(command, cwd=ROOT)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                status = (
                    health_pb2_grpc.HealthStub(channel)
                    .Check(health_pb2.HealthCheckRequest(), timeout=1)
                    .status
                )
            if status == health_pb2.HealthCheckResponse.SERVING:
                return proc, target
        except grpc.RpcError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the ranker server did not become ready")


ORT_NAME = "(a) raw ORT, intra_op={}, spinning={}"


async def measure(
    args: argparse.Namespace,
    model: torch.nn.Module,
    package: Path,
    ids: np.ndarray,
    sparse: np.ndarray,
    dense: np.ndarray,
    target: str,
) -> list[Result]:
    """Every measurement in interleaved rounds, so that load from other processes hits them all alike."""
    from grpc import aio

    from proto import ranking_pb2, ranking_pb2_grpc

    feeds = {"sparse": sparse, "dense": dense}
    batch = {"sparse": torch.from_numpy(sparse), "dense": torch.from_numpy(dense)}
    sessions = {
        ORT_NAME.format(t, "on" if spin else "off"): ort_session(package / "model.onnx", t, spin)
        for t in sorted({1, args.threads})
        for spin in (False, True)
    }
    local: dict[str, Callable[[], object]] = {
        name: (lambda s=session: s.run(["logits"], feeds)) for name, session in sessions.items()
    }

    def eager(threads: int) -> Callable[[], object]:
        def call() -> None:
            torch.set_num_threads(threads)
            with torch.no_grad():
                model(batch)

        return call

    eager_runs = {f"(b) PyTorch eager, {t} threads": eager(t) for t in sorted({1, args.threads})}
    request = ranking_pb2.RankRequest(
        user_id="bench-user",
        user_sparse=[123, 7],
        user_dense=[0.1, -0.2, 0.3, 0.0],
        candidate_ids=ids.tolist(),
        top_k=100,
    )
    results = {name: Result(name) for name in [*local, *eager_runs]}
    server = {c: Result(f"(c) server end to end, concurrency {c}") for c in (1, 16)}
    per_round = max(args.requests // args.rounds, 1)
    async with aio.insecure_channel(target) as channel:
        stub = ranking_pb2_grpc.RankerStub(channel)
        for fn in local.values():  # warm-up
            timed(Result("warm-up"), fn, 20)
        await server_round(stub, request, Result("warm-up"), 16, 64)
        for _ in tqdm(range(args.rounds), desc="rounds"):
            for name, fn in local.items():
                timed(results[name], fn, per_round)
            for name, fn in eager_runs.items():
                timed(results[name], fn, max(per_round // 10, 2))
            for concurrency, result in server.items():
                await server_round(stub, request, result, concurrency, per_round)
    return [*results.values(), *server.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=600, help="timed requests per measurement")
    parser.add_argument(
        "--rounds", type=int, default=10, help="interleaved rounds the requests are split into"
    )
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op / torch threads"
    )
    parser.add_argument("--server-args", default="", help="extra flags for python -m ranker_server")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    model = build_model()
    params = sum(p.numel() for p in model.parameters())
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        package = write_package(model, repository)
        ids, sparse, dense = request_rows(package, args.candidates, rng)
        proc, target = start_server(repository, args.threads, args.server_args.split())
        try:
            results = asyncio.run(measure(args, model, package, ids, sparse, dense, target))
        finally:
            proc.terminate()
            proc.wait(30)
    ort_runs = [r for r in results if r.name.startswith("(a)")]
    floor = next(r for r in ort_runs if r.name == ORT_NAME.format(args.threads, "off"))
    eager = min((r for r in results if r.name.startswith("(b)")), key=lambda r: r.p50_ms)
    server1, server16 = results[-2], results[-1]
    latency_target_ms = 1.3 * floor.p50_ms + 1.0
    lines = [
        f"Model: MMoE (4 experts 256-128, towers 128-64, 3 tasks), {params:,} parameters; {args.candidates} candidates/request.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only (no GPU in this task); "
        f"onnxruntime {ort.__version__}, torch {torch.__version__}; {args.requests} timed requests per row.",
        "",
        "| measurement | p50 ms | p99 ms | req/s |",
        "|---|---|---|---|",
        *(r.row() for r in results),
        "",
        f"Floor used for the ratios: {floor.name}.",
        f"server p50 at concurrency 1: {server1.p50_ms:.3f} ms vs target 1.3 x {floor.p50_ms:.3f} + 1 = {latency_target_ms:.3f} ms "
        f"-> ratio {server1.p50_ms / latency_target_ms:.2f} ({'met' if server1.p50_ms <= latency_target_ms else 'NOT met'})",
        f"server req/s at concurrency 16: {server16.rps:.0f} vs raw ORT {floor.rps:.0f} "
        f"-> {server16.rps / floor.rps:.0%} of the floor (target >= 90%: {'met' if server16.rps >= 0.9 * floor.rps else 'NOT met'})",
        f"PyTorch eager (best thread count) / raw ORT p50: {eager.p50_ms / floor.p50_ms:.2f}x",
        f"Load average (1 min) of the shared machine: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
