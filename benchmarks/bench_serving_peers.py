"""The ranker against the serving system a user would otherwise pick, same model, same machine, same run.

One ONNX ranking graph (bench_ranker's ~1M-parameter MMoE, 3 tasks), 500 candidates per request, served by:
  * KServe's Python ModelServer (PyPI ``kserve``) with a custom Model around an ONNX Runtime session with the
    same thread settings (benchmarks/peers/kserve_onnx_server.py, in KServe's own venv), called over its gRPC
    v2 endpoint (Open Inference Protocol ModelInfer, raw tensor contents: the 500 candidates' feature rows);
    by default in two set-ups, each the best for one side of the comparison: ORT inside a sync ``predict`` on
    the event loop with threads spinning during runs (KServe's documented pattern; lowest latency alone) and
    ORT in a thread pool from an async ``predict`` with threads that sleep (best under concurrency);
  * our ranker, ``python -m ranker_server`` with its defaults, a running experiment (two variants of the model,
    assignment on every request) and no Kafka: Rank with the 500 candidate ids (features from its item table,
    scored with the package's factored graph: the user's share of the input layers once, the candidates' shares
    precomputed at load; then scores, merge, top 100), and ModelInfer with the same tensors as KServe gets
    (the package graph) from a second process of the same server, so that each row has a server of its own;
    ``--ranker-variant "--factored-max-mb 0"`` adds Rank on the package graph;
  * the bare grpc.aio + ORT floor of bench_ranker (c1: a servicer that only runs the ORT call in an executor
    thread and returns a pre-built response of Rank's size), with ORT threads spinning during runs, not
    spinning, and each run as two halves of its rows at once on two executor threads with one ORT thread
    each (as our ranker scores a run alone in its process): the fastest at concurrency 1 is the floor;
  * Rank's work floor: the same bare servicer doing only what a Rank answer needs (item-table rows, ORT, scores,
    merge, top 100, the response) in straight-line numpy, without checks, assignment, metrics or batcher: how
    far below the ranker a Python servicer of Rank's contract can go on this machine; the same servicer on
    grpc's synchronous thread-pool server (ORT in the handler's thread), the other way to build a Python server;
    and the grpc.aio one scoring with the package's factored graph in two halves at once, as our Rank does;
  * raw ONNX Runtime in this process (no server; sequential calls, so its req/s is the compute floor), as one
    run and as two halves at once.
Concurrency 1 through synchronous stubs (p50/p99), concurrency 4 and 16 through that many grpc.aio callers on one
channel, or spread over ``--connections N`` (req/s), in interleaved rounds whose order rotates, so that load from
other processes hits every row. A round's 32 calls at concurrency 16 are two per caller, so that figure is as
much the ramp-up and tail of a burst as throughput; after the rounds, each row also gets
``--sustained-reps`` repetitions of ``--sustained-s`` seconds of 16 callers that keep calling (rotating order;
the median reported).

Set-up once:  benchmarks/peers/setup_kserve_venv.sh            (KServe's venv, default /work/venvs/kserve)
Run:          flock /tmp/mtrank-bench.lock .venv/bin/python benchmarks/bench_serving_peers.py [--out results.md]
              [--ranker-code NAME=DIR]   (a ranker from another checkout beside this one, to compare a change)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import metadata
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

import bench_ranker as br  # noqa: E402 (also puts the repository root on sys.path)
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = br.ROOT
KSERVE_PYTHON = Path("/work/venvs/kserve/bin/python")
KSERVE_SERVER = BENCHMARKS / "peers" / "kserve_onnx_server.py"
MODEL = "bench-mmoe"
CONCURRENCY = (1, 4, 16)

# A running experiment: every request is assigned (hash, buckets, payload) before it is scored.
EXPERIMENTS = """\
version: 1
defaults:
  retrieval: {model_name: none, model_version: "1"}
  ranking: {model_name: bench-mmoe, model_version: "1", task_weights: {click: 1.0, like: 0.5, watch: 0.1}}
experiments:
  - key: bench-ranking
    stage: ranking
    status: running
    layer: {name: ranking, range: [0.0, 1.0]}
    coverage: 1.0
    variations:
      - {key: control, weight: 0.5, payload: {model_name: bench-mmoe, model_version: "1", task_weights: {click: 1.0, like: 0.5, watch: 0.1}}}
      - {key: treatment, weight: 0.5, payload: {model_name: bench-mmoe, model_version: "1", task_weights: {click: 1.0, like: 0.2, watch: 0.3}}}
"""


def infer_request(sparse: np.ndarray, dense: np.ndarray):
    """The Open Inference Protocol request with the 500 candidates' rows, as tritonclient sends it (raw)."""
    from proto import inference_pb2

    request = inference_pb2.ModelInferRequest(model_name=MODEL, id="bench")
    for name, datatype, data in (("sparse", "INT64", sparse), ("dense", "FP32", dense)):
        request.inputs.add(name=name, datatype=datatype, shape=data.shape)
        request.raw_input_contents.append(np.ascontiguousarray(data).tobytes())
    request.outputs.add(name="logits")
    return request


def wait_ready(target: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 180) -> None:
    """Poll ServerReady + ModelReady over the Open Inference Protocol until both say yes."""
    import grpc

    from proto import inference_pb2, inference_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with code {proc.returncode}")
            try:
                if (
                    stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=1).ready
                    and stub.ModelReady(inference_pb2.ModelReadyRequest(name=MODEL), timeout=1).ready
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{what} did not become ready within {timeout_s:.0f} s")


def start_kserve(
    python: Path, package: Path, threads: int, predict: str, spinning: str
) -> tuple[subprocess.Popen[bytes], str]:
    grpc_port, http_port = br.free_port(), br.free_port()
    command = [str(python), str(KSERVE_SERVER), "--model", str(package / "model.onnx"), "--name", MODEL]
    command += ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    command += ["--intra-op-threads", str(threads), "--predict", predict, "--spinning", spinning]
    proc = subprocess.Popen(command, cwd=ROOT)
    target = f"127.0.0.1:{grpc_port}"
    wait_ready(target, proc, f"KServe ({predict}, spinning {spinning})")
    return proc, target


def logits_of(response) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(tuple(response.outputs[0].shape))


async def measure(
    args: argparse.Namespace,
    package: Path,
    rank_request,
    oip_request,
    feeds: dict[str, np.ndarray],
    targets: dict[str, tuple[str, str]],
) -> tuple[dict[str, dict[int, br.Result]], dict[str, br.Result], dict[str, list[br.Result]]]:
    """Interleaved rounds: each round gives every row ``requests / rounds`` calls at concurrency 1, 16 calls
    from 4 callers and 32 from 16 callers; the order of the servers rotates from round to round. Then
    ``sustained_reps`` rounds of ``sustained_s`` seconds of 16 callers per row (the same rotation), one result
    per row and repetition: a 32-call burst is two calls per caller, so its figure is half ramp-up and
    tail."""
    import grpc
    from grpc import aio

    from proto import inference_pb2_grpc, ranking_pb2_grpc

    def method(channel, kind: str):
        if kind == "rank":
            return ranking_pb2_grpc.RankerStub(channel).Rank
        return inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

    requests = {"rank": rank_request, "infer": oip_request}
    model = package / "model.onnx"
    runs: dict[str, Callable[[], object]] = {
        f"intra_op={args.threads}, spinning {spinning}": partial(
            br.run_rows, br.ort_session(model, args.threads, spinning), feeds
        )
        for spinning in ("during runs", "off")
    }
    if args.raw_chunk_rows:  # the same rows as sequential runs of at most this many (cache-sized batches)
        runs[f"intra_op=1, spinning off, in runs of <= {args.raw_chunk_rows} rows"] = partial(
            br.run_rows, br.ort_session(model, 1, "off"), feeds, args.raw_chunk_rows
        )
    helper = ThreadPoolExecutor(1)  # the second half's thread
    halves = br.ort_session(model, max(1, args.threads // 2), "off")
    runs[RAW_HALVES] = partial(br.run_halves, halves, feeds, helper)

    raw = {name: br.Result(f"raw ORT in-process, {name}") for name in runs}
    results = {name: {c: br.Result(f"{name}, concurrency {c}") for c in CONCURRENCY} for name in targets}
    per_round = br.calls_per_round(args.requests, args.rounds)
    sync_channels = {name: grpc.insecure_channel(target) for name, (target, _) in targets.items()}
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel, not one shared
    aio_channels = {
        name: [aio.insecure_channel(target, options=options) for _ in range(args.connections)]
        for name, (target, _) in targets.items()
    }
    try:
        sync_calls: dict[str, Callable[[], object]] = {}
        for name, (_, kind) in targets.items():
            call, request = method(sync_channels[name], kind), requests[kind]
            sync_calls[name] = lambda call=call, request=request: call(request, timeout=30)
        aio_calls = {
            name: ([method(channel, kind) for channel in aio_channels[name]], requests[kind])
            for name, (_, kind) in targets.items()
        }
        for name, fn in sync_calls.items():  # warm-up: connections, arenas, caches
            br.timed(br.Result("warm-up"), fn, 20)
            await br.server_round(*aio_calls[name], br.Result("warm-up"), 16, 64)
        for run in runs.values():
            br.timed(br.Result("warm-up"), run, 20)
        names = list(targets)
        for round_index in tqdm(range(args.rounds), desc="rounds"):
            shift = round_index % len(names)
            order = names[shift:] + names[:shift]
            for name, run in runs.items():
                br.timed(raw[name], run, per_round)
            for name in order:
                br.timed(results[name][1], sync_calls[name], per_round)
            for concurrency in CONCURRENCY[1:]:
                for name in order:
                    calls = 4 * concurrency if concurrency == 4 else 2 * concurrency
                    await br.server_round(*aio_calls[name], results[name][concurrency], concurrency, calls)
        sustained: dict[str, list[br.Result]] = {name: [] for name in names}
        for rep in tqdm(range(args.sustained_reps if args.sustained_s else 0), desc="sustained"):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                sustained[name].append(br.Result(f"{name}, sustained"))
                await br.server_round(*aio_calls[name], sustained[name][-1], 16, 0, args.sustained_s)
    finally:
        helper.shutdown()
        for channel in sync_channels.values():
            channel.close()
        for channels in aio_channels.values():
            for channel in channels:
                await channel.close()
    return results, raw, sustained


def check_same_model(targets: dict[str, tuple[str, str]], rank_request, oip_request, expected: np.ndarray) -> None:
    """Every Open Inference server returns the raw ORT logits; Rank answers with an experiment assignment."""
    import grpc

    from proto import inference_pb2_grpc, ranking_pb2_grpc

    for name, (target, kind) in targets.items():
        with grpc.insecure_channel(target) as channel:
            if kind == "infer":
                response = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(oip_request, timeout=30)
                np.testing.assert_allclose(logits_of(response), expected, rtol=1e-4, atol=1e-5, err_msg=name)
            else:
                response = ranking_pb2_grpc.RankerStub(channel).Rank(rank_request, timeout=30)
                top = min(rank_request.top_k, len(rank_request.candidate_ids))
                assert len(response.candidate_ids) == top, name
                assert [a.experiment_key for a in response.assignments] == ["bench-ranking"], name


def check_work_floor(target: str, rank_request, ids: np.ndarray, logits: np.ndarray) -> None:
    """Rank's work floor answers what the control variant would: its top 100 of the weighted task scores."""
    import grpc

    from proto import ranking_pb2_grpc

    scores = logits.T.copy()
    scores[br.BINARY_TASKS] = 1 / (1 + np.exp(-scores[br.BINARY_TASKS]))
    merged = br.TASK_WEIGHTS @ scores
    with grpc.insecure_channel(target) as channel:
        response = ranking_pb2_grpc.RankerStub(channel).Rank(rank_request, timeout=30)
    top = np.argsort(-merged, kind="stable")[:100]
    assert list(response.candidate_ids) == ids[top].tolist(), "Rank's work floor ranks differently"
    np.testing.assert_allclose(response.merged_scores, merged[top], rtol=1e-5)


def report(
    args: argparse.Namespace,
    results: dict[str, dict[int, br.Result]],
    raw: dict[str, br.Result],
    load: tuple[str, str],
    kserve_names: list[str],
    sustained: dict[str, list[br.Result]],
) -> str:
    ours, oip = results[RANK], results[OIP]
    floor_name = min(FLOORS, key=lambda n: results[n][1].p50_ms)
    floor, work, threaded = results[floor_name], results[WORK_FLOOR], results[THREADED_WORK_FLOOR]
    factored = results[FACTORED_WORK_FLOOR]
    fastest = min(raw.values(), key=lambda r: r.p50_ms)
    per_round = br.calls_per_round(args.requests, args.rounds)
    lines = [
        f"Model: MMoE (4 experts 256-128, towers 128-64, 3 tasks), 996,911 parameters; {args.candidates} candidates/request.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only; onnxruntime {ort.__version__} "
        f"(KServe's venv: the same version), kserve {args.kserve_version}, grpcio {metadata.version('grpcio')}; "
        f"ORT intra-op threads {args.threads}, inter-op 1, sequential, everywhere.",
        f"Timed calls per row: concurrency 1: {per_round * args.rounds} (sync stub); "
        f"concurrency 4: {16 * args.rounds}; "
        f"concurrency 16: {32 * args.rounds} (grpc.aio callers on {connections(args.connections)}); "
        f"{args.rounds} interleaved rounds"
        + (
            f"; then concurrency 16 sustained: {args.sustained_reps} x {args.sustained_s:g} s of 16 callers "
            "per row, rotating (median req/s, and the range over the repetitions)."
            if any(sustained.values())
            else "."
        ),
        "",
        "| server | c=1 p50 ms | c=1 p99 ms | c=4 req/s | c=16 req/s (bursts of 32) | c=16 req/s sustained |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for result in raw.values():
        lines.append(
            f"| {result.name} | {result.p50_ms:.3f} | {result.p99_ms:.3f} | {result.rps:.0f} (sequential) "
            "| - | - |"
        )
    for name, by_c in results.items():
        lines.append(
            f"| {name} | {by_c[1].p50_ms:.3f} | {by_c[1].p99_ms:.3f} | {by_c[4].rps:.0f} "
            f"| {by_c[16].rps:.0f} | {sustained_cell(sustained.get(name, []))} |"
        )
    best_p50 = min(kserve_names, key=lambda n: results[n][1].p50_ms)
    best_rps = max(kserve_names, key=lambda n: results[n][16].rps)
    k50, k16 = results[best_p50][1].p50_ms, results[best_rps][16].rps

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines += [
        "",
        f"KServe's best p50 at concurrency 1: {best_p50}; its best req/s at concurrency 16: {best_rps}; "
        f"the floor: the faster bare servicer at concurrency 1, {floor_name}.",
        f"Target 1, our p50 (Rank) <= KServe's: {ours[1].p50_ms:.3f} vs {k50:.3f} ms -> ratio "
        f"{ours[1].p50_ms / k50:.2f} ({verdict(ours[1].p50_ms <= k50)})",
        f"Target 2, our p50 (Rank) <= 1.15 x the bare floor: {ours[1].p50_ms:.3f} vs {floor[1].p50_ms:.3f} ms -> ratio "
        f"{ours[1].p50_ms / floor[1].p50_ms:.2f} ({verdict(ours[1].p50_ms <= 1.15 * floor[1].p50_ms)})",
        f"Target 3, our req/s at concurrency 16 (Rank) >= KServe's: {ours[16].rps:.0f} vs {k16:.0f} -> "
        f"{ours[16].rps / k16:.0%} ({verdict(ours[16].rps >= k16)})",
        *sustained_verdict(sustained, kserve_names),
        f"Same protocol, same tensors (our ModelInfer vs KServe's best): p50 ratio {oip[1].p50_ms / k50:.2f}, "
        f"c=4 {oip[4].rps / max(results[n][4].rps for n in kserve_names):.0%}, c=16 {oip[16].rps / k16:.0%}",
        f"Rank's work floor (a bare servicer doing only what a Rank answer needs): {work[1].p50_ms:.3f} ms p50 = "
        f"{work[1].p50_ms / floor[1].p50_ms:.2f} x the floor; our Rank = {ours[1].p50_ms / work[1].p50_ms:.2f} x it; "
        f"c=16 {work[16].rps:.0f} req/s (Rank {ours[16].rps / work[16].rps:.0%} of it); on the thread-pool server "
        f"{threaded[1].p50_ms:.3f} ms p50 = {threaded[1].p50_ms / work[1].p50_ms:.2f} x the grpc.aio one, "
        f"c=16 {threaded[16].rps:.0f} req/s; with the factored graph {factored[1].p50_ms:.3f} ms p50 = "
        f"{factored[1].p50_ms / k50:.2f} x KServe's best, {factored[1].p50_ms / floor[1].p50_ms:.2f} x the floor "
        f"(our Rank = {ours[1].p50_ms / factored[1].p50_ms:.2f} x it), c=16 {factored[16].rps:.0f} req/s",
        f"Over the faster raw ORT row ({fastest.name}, p50 {fastest.p50_ms:.3f} ms): Rank +{ours[1].p50_ms - fastest.p50_ms:.3f} ms, "
        f"the floor +{floor[1].p50_ms - fastest.p50_ms:.3f} ms, KServe best +{k50 - fastest.p50_ms:.3f} ms.",
        f"uptime before: {load[0]}",
        f"uptime after:  {load[1]}",
        "",
        *by_position(results, per_round),
    ]
    return "\n".join(lines)


def sustained_rps(reps: list[br.Result]) -> float:
    """The median of a row's sustained repetitions' requests/s."""
    return float(np.median([r.rps for r in reps]))


def sustained_cell(reps: list[br.Result]) -> str:
    if not reps:
        return "-"
    rates = [r.rps for r in reps]
    return f"{sustained_rps(reps):.0f} ({min(rates):.0f}-{max(rates):.0f})"


def sustained_verdict(sustained: dict[str, list[br.Result]], kserve_names: list[str]) -> list[str]:
    """Target 3 on sustained load: our Rank's median against KServe's best median (none when not measured)."""
    if not sustained.get(RANK):
        return []
    best = max(kserve_names, key=lambda n: sustained_rps(sustained[n]))
    ours, theirs = sustained_rps(sustained[RANK]), sustained_rps(sustained[best])
    above = sum(o.rps >= t.rps for o, t in zip(sustained[RANK], sustained[best], strict=True))
    return [
        f"Target 3 on sustained load (median of the repetitions): {ours:.0f} vs {theirs:.0f} ({best}) -> "
        f"{ours / theirs:.0%} ({'met' if ours >= theirs else 'NOT met'}); our Rank at or above KServe's best "
        f"in {above} of {len(sustained[RANK])} repetitions"
    ]


def by_position(results: dict[str, dict[int, br.Result]], per_round: int) -> list[str]:
    """Concurrency 1's p50 by the call's place in its round: call 0 follows the previous round's bursts, so a
    server that is slow to recover from them shows it in the first columns, not in its load-free cost."""
    lines = [
        "Concurrency 1, p50 ms by the call's place in its round (0: the first after the previous round's bursts):",
        "",
        "| server | " + " | ".join(str(i) for i in range(per_round)) + " |",
        "|---|" + "---:|" * per_round,
    ]
    for name, by_c in results.items():
        latencies = np.array(by_c[1].latencies_s) * 1e3
        place = np.arange(len(latencies)) % per_round
        lines.append(
            f"| {name} | " + " | ".join(f"{np.median(latencies[place == i]):.3f}" for i in range(per_round)) + " |"
        )
    return lines


RANK, OIP = "ours: ranker Rank (experiment on)", "ours: ranker ModelInfer (OIP)"
WORK_FLOOR = "bare grpc.aio + ORT + Rank's work in straight numpy (spinning during runs; no checks, assignment, metrics)"
THREADED_WORK_FLOOR = "the same work on grpc's thread-pool server (16 handler threads, ORT in the handler's thread)"
FACTORED_WORK_FLOOR = (
    "the same work on grpc.aio with the factored graph, two halves at once (as the ranker's Rank)"
)
WORK_FLOORS = {  # row -> serve_floor's server kind, whether it scores with the factored graph, and in halves
    WORK_FLOOR: ("aio", False, False),
    THREADED_WORK_FLOOR: ("threads", False, False),
    FACTORED_WORK_FLOOR: ("aio", True, True),
}
FLOORS = {  # the bare servicers: row -> start_floor's spinning and halves
    "bare grpc.aio + ORT floor (executor, spinning during runs)": ("during runs", False),
    "bare grpc.aio + ORT floor (executor, spinning off)": ("off", False),
    "bare grpc.aio + ORT floor (two halves at once on two executor threads, one ORT thread each)": (
        "off",
        True,
    ),
}
RAW_HALVES = "two halves at once on two threads, intra_op=1 each"


def lone_run_shares(metrics_ports: dict[str, int]) -> list[str]:
    """Where each ranker's lone runs went over the whole run (``mtrank_inference_lone_runs_total``): in
    parts at once (``--split-rows``), or on the session the chooser picked (one held on the sleeping
    session shows here, run 48); and how many runs took the event loop's thread
    (``mtrank_inference_loop_runs_total``, ``--lone-runs loop``)."""
    lines = ["Lone runs (ONNX Runtime alone in the process) by session, over the whole run:"]
    for label, port in metrics_ports.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
        runs = {s.labels["session"]: s.value for s in samples if s.name == "mtrank_inference_lone_runs_total"}
        on_loop = [s.value for s in samples if s.name == "mtrank_inference_loop_runs_total"]
        loop_note = f"; {on_loop[0]:.0f} runs on the event loop's thread" if on_loop else ""
        split = runs.pop("split", 0.0)
        total = sum(runs.values())
        if not total + split:
            lines.append(f"- {label}: none counted (one session, or a ranker without the counter){loop_note}")
            continue
        shares, spinning, lone = [], runs.get("spinning", 0.0), split + total
        if split:
            shares.append(f"{split:.0f} of {lone:.0f} in parts at once ({split / lone:.0%})")
        if total:
            of = "of the others " if split else ""
            share = f"{spinning / total:.0%}"
            shares.append(f"{spinning:.0f} of {total:.0f} {of}on the spinning session ({share})")
        lines.append(f"- {label}: {', '.join(shares)}{loop_note}")
    return lines


def connections(n: int) -> str:
    return "one channel" if n == 1 else f"{n} connections, caller i on connection i mod {n}"



def kserve_label(predict: str, spinning: str) -> str:
    how = "ORT in sync predict, on the loop" if predict == "sync" else "ORT in a thread pool, async predict"
    return f"KServe ModelServer ModelInfer ({how}, spinning {spinning})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600, help="timed calls per row at concurrency 1")
    parser.add_argument("--rounds", type=int, default=60, help="interleaved rounds")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op threads, every server")
    parser.add_argument("--kserve-python", type=Path, default=KSERVE_PYTHON, help="python of KServe's own venv")
    parser.add_argument("--kserve", default="sync:during-runs,executor:off",
                        help="KServe set-ups to run, PREDICT:SPINNING,... (PREDICT sync|executor, SPINNING off|during-runs)")  # fmt: skip
    parser.add_argument("--server-args", default="", help="extra flags for python -m ranker_server")
    parser.add_argument("--ranker-variant", action="append", default=[], metavar="FLAGS",
                        help="also measure a ranker started with these extra flags (Rank rows), e.g. '--spinning off'")  # fmt: skip
    parser.add_argument("--ranker-code", action="append", default=[], metavar="NAME=DIR",
                        help="also measure a ranker (Rank rows) started from checkout DIR, to compare a change side by side")  # fmt: skip
    parser.add_argument("--connections", type=int, default=1,
                        help="client connections per server for the concurrency 4 and 16 callers, caller i on "
                             "connection i mod N (default 1: every caller on one channel)")  # fmt: skip
    parser.add_argument("--raw-chunk-rows", type=int, default=256,
                        help="also time raw ORT on the request in sequential runs of at most this many rows (0: no)")  # fmt: skip
    parser.add_argument("--sustained-s", type=float, default=4.0,
                        help="seconds of each sustained concurrency 16 repetition (0: none)")  # fmt: skip
    parser.add_argument("--sustained-reps", type=int, default=3,
                        help="sustained repetitions per row, rotating")  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    if not args.kserve_python.is_file():
        print(
            f"KServe's venv is missing ({args.kserve_python}): create it with benchmarks/peers/setup_kserve_venv.sh "
            "(kserve pins protobuf < 7, so it never goes into the project venv)",
            file=sys.stderr,
        )
        return 2
    args.kserve_version = subprocess.run(
        [str(args.kserve_python), "-c", "from importlib.metadata import version; print(version('kserve'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    setups = [tuple(item.split(":")) for item in args.kserve.split(",")]
    uptime_before = br.uptime()
    model = br.build_model()
    rng = np.random.default_rng(1)
    processes: list[subprocess.Popen[bytes]] = []
    floors: list = []  # multiprocessing.Process
    with tempfile.TemporaryDirectory() as tmp:
        package = br.write_package(model, Path(tmp))
        ids, sparse, dense = br.request_rows(package, args.candidates, rng)
        np.savez(package / "floor_request.npz", ids=ids, sparse=sparse, dense=dense)
        feeds = {"sparse": sparse, "dense": dense}
        expected = br.ort_session(package / "model.onnx", args.threads, "off").run(["logits"], feeds)[0]
        try:
            metrics_ports = {RANK: br.free_port()}  # Rank rows' servers: where lone_run_shares reads them
            targets = {}
            # A ranker process per row, as every other row has its own server: Rank's process also serving
            # ModelInfer (until run 73) shared its cores' caches with a second graph's sessions.
            for label, kind, port in ((RANK, "rank", metrics_ports[RANK]), (OIP, "infer", br.free_port())):
                ranker, ranker_target = br.start_server(
                    Path(tmp), args.threads, port, args.server_args.split(), EXPERIMENTS
                )
                processes.append(ranker)
                targets[label] = (ranker_target, kind)
            for label, (spinning, halves) in FLOORS.items():
                floor, floor_target = br.start_floor(
                    package, args.threads, inline=False, spinning=spinning, halves=halves
                )
                floors.append(floor)
                targets[label] = (floor_target, "rank")
            for label, (server, factored, halves) in WORK_FLOORS.items():
                floor, floor_target = br.start_floor(
                    package, args.threads, False, work=True, server=server, factored=factored, halves=halves
                )
                floors.append(floor)
                targets[label] = (floor_target, "rank")
            rankers = [(f"{RANK} {flags}", flags.split(), ROOT) for flags in args.ranker_variant]
            checkouts = (item.split("=", 1) for item in args.ranker_code)
            rankers += [(f"{RANK}, {name}", [], Path(code)) for name, code in checkouts]
            for label, flags, code in rankers:  # Rank rows beside ours: other flags, or another checkout
                extra = [*args.server_args.split(), *flags]
                metrics_ports[label] = br.free_port()
                proc, target = br.start_server(
                    Path(tmp), args.threads, metrics_ports[label], extra, EXPERIMENTS, code=code
                )
                processes.append(proc)
                targets[label] = (target, "rank")
            for predict, spinning in setups:
                proc, target = start_kserve(args.kserve_python, package, args.threads, predict, spinning)
                processes.append(proc)
                targets[kserve_label(predict, spinning)] = (target, "infer")
            rank_request, oip_request = br.rank_request(ids), infer_request(sparse, dense)
            floor_names = FLOORS.keys() | WORK_FLOORS.keys()
            check_same_model(
                {k: v for k, v in targets.items() if k not in floor_names}, rank_request, oip_request, expected
            )
            for label in WORK_FLOORS:
                check_work_floor(targets[label][0], rank_request, ids, expected)
            results, raw, sustained = asyncio.run(
                measure(args, package, rank_request, oip_request, feeds, targets)
            )
            shares = lone_run_shares(metrics_ports)
        finally:
            for floor in floors:
                floor.kill()
            for proc in processes:
                proc.terminate()
            for proc in processes:
                proc.wait(30)
    uptime_after = br.uptime()
    kserve_names = [kserve_label(*s) for s in setups]
    text = report(args, results, raw, (uptime_before, uptime_after), kserve_names, sustained)
    br.emit("\n".join([text, "", *shares]), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
