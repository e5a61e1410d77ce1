"""Where a lone Rank request's CPU goes, thread by thread: the ranker against the bare grpc.aio + ORT floor.

p50 latencies at concurrency 1 on this 2-core VM move by +-0.3 ms between runs minutes apart, more than the
effects being looked for; CPU time per thread does not. So each server (bench_ranker's MMoE, 500 candidates,
the running experiment of bench_serving_peers) gets sequential Rank calls in interleaved rounds, and around each
round the CPU time of every thread of its process is read from ``/proc/<pid>/task/<tid>/schedstat`` (ns).
Reported per call: p50 latency, the event-loop (main) thread's CPU, ONNX Runtime's threads (the executor
thread that calls ``run`` plus the intra-op pool), the rest (gRPC's poller), and the process's minor page faults
(fresh memory touched: a request path that allocates and frees large arrays through ``mmap`` pays one per 4 KiB
page). At concurrency 1 every microsecond the event loop spends is on the request's critical path, so the
main-thread difference between the ranker and the floor is the ranker's own request path. Beside them, Rank's work floor: the bare servicer doing
only what a Rank answer needs in straight-line numpy (bench_ranker's ``serve_floor`` with ``work``).

``--server NAME=DIR`` adds a ranker started from another checkout (``python -m ranker_server`` run in DIR), to
compare a change side by side with the tree it came from.

Latencies: "c=1 p50" over every call but each round's first, which is reported apart (it finds the caches
filled by the servers that ran before it).

Run:  .venv/bin/python benchmarks/bench_rank_threads.py [--rounds 40] [--per-round 30] [--burst 32]
      [--server NAME=DIR ...] [--ranker-variant FLAGS ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

import bench_ranker as br  # noqa: E402 (puts the repository root on sys.path too)
import bench_serving_peers as peers  # noqa: E402
import numpy as np  # noqa: E402


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """CPU time (ns) of every live thread of ``pid``, by thread id; threads that exit meanwhile are skipped."""
    cpu = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                cpu[int(tid)] = int(stat.read().split()[0])
        except (OSError, ValueError):
            continue
    return cpu


def minor_faults(pid: int) -> int:
    """Minor page faults of process ``pid`` so far (``minflt``, field 10 of ``/proc/<pid>/stat``): memory the
    process touches for the first time (fresh pages from ``mmap``/``brk``) costs one each."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


def thread_role(pid: int, tid: int) -> str:
    """``main`` (the event loop), ``grpc`` (its poller threads) or ``onnxruntime`` (executor and pool threads)."""
    if tid == pid:
        return "main"
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as comm:
            name = comm.read().strip()
    except OSError:
        return "onnxruntime"
    return "grpc" if name == "event_engine" or name.startswith("grpc") else "onnxruntime"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (default 40)")
    parser.add_argument(
        "--per-round", type=int, default=30, help="sequential calls per server per round (at least 2)"
    )
    parser.add_argument("--server", action="append", default=[], metavar="NAME=DIR",
                        help="also measure a ranker started from checkout DIR")  # fmt: skip
    parser.add_argument("--ranker-variant", action="append", default=[], metavar="FLAGS",
                        help="also measure this tree's ranker started with these extra flags, e.g. '--spinning on'")  # fmt: skip
    parser.add_argument("--burst", type=int, default=0, metavar="N",
                        help="after each round, N calls to every server from 16 threads at once, as the concurrency "
                             "rounds of bench_serving_peers do (not timed; default 0: sequential calls only)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.per_round < 2:
        parser.error("--rounds must be at least 1 and --per-round at least 2 (a round's first call is apart)")
    import concurrent.futures
    import time

    import grpc

    from proto import ranking_pb2_grpc

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        package = br.write_package(br.build_model(), Path(tmp))
        ids, sparse, dense = br.request_rows(package, 500, rng)
        np.savez(package / "floor_request.npz", ids=ids, sparse=sparse, dense=dense)
        servers: dict[str, tuple[int, str]] = {}
        procs = []
        try:
            floor, target = br.start_floor(package, 2, inline=False, spinning="during runs")
            procs.append(floor)
            servers["bare grpc.aio + ORT floor"] = (floor.pid, target)
            work, target = br.start_floor(package, 2, inline=False, spinning="during runs", work=True)
            procs.append(work)
            servers["Rank's work floor (bare servicer, straight numpy)"] = (work.pid, target)
            rankers = [("ranker (this tree)", str(br.ROOT), "")]
            rankers += [(f"ranker (this tree) {flags}", str(br.ROOT), flags) for flags in args.ranker_variant]
            rankers += [(*s.split("=", 1), "") for s in args.server]
            for name, code, flags in rankers:
                proc, target = br.start_server(
                    Path(tmp), 2, br.free_port(), flags.split(), peers.EXPERIMENTS, code=Path(code)
                )
                procs.append(proc)
                servers[name] = (proc.pid, target)
            request = br.rank_request(ids)
            stubs = {name: ranking_pb2_grpc.RankerStub(grpc.insecure_channel(t)) for name, (_, t) in servers.items()}
            for stub in stubs.values():  # warm-up: first calls pick kernels and fill caches
                for _ in range(200):
                    stub.Rank(request, timeout=10)
            results = {name: br.Result(name) for name in servers}
            # Each round's first call apart: it finds the caches filled by the servers that ran before it.
            first = {name: br.Result(name) for name in servers}
            cpu: dict[str, dict[str, int]] = {name: defaultdict(int) for name in servers}
            faults: dict[str, int] = defaultdict(int)
            names = list(servers)
            callers = concurrent.futures.ThreadPoolExecutor(16)
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    pid, stub = servers[name][0], stubs[name]
                    before, faults_before = thread_cpu_ns(pid), minor_faults(pid)
                    for i in range(args.per_round):
                        started = time.perf_counter()
                        stub.Rank(request, timeout=10)
                        (first if i == 0 else results)[name].latencies_s.append(time.perf_counter() - started)
                    for tid, ns in thread_cpu_ns(pid).items():
                        cpu[name][thread_role(pid, tid)] += ns - before.get(tid, 0)
                    faults[name] += minor_faults(pid) - faults_before
                if args.burst:
                    for name in order:
                        list(callers.map(lambda _, s=stubs[name]: s.Rank(request, timeout=30), range(args.burst)))
            callers.shutdown()
        finally:
            for proc in procs:
                proc.kill()
    calls = args.rounds * args.per_round
    burst = f", a burst of {args.burst} calls from 16 threads after each" if args.burst else ""
    print(f"{calls} calls per server, {args.rounds} interleaved rounds{burst}; CPU per call in microseconds")
    print(
        "| server | c=1 p50 ms | 1st call of a round p50 ms | main (event loop) | onnxruntime threads | grpc poller "
        "| all | page faults per call |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        per_call = {role: ns / calls / 1e3 for role, ns in cpu[name].items()}
        print(
            f"| {name} | {results[name].p50_ms:.3f} | {first[name].p50_ms:.3f} | {per_call.get('main', 0):.0f} | "
            f"{per_call.get('onnxruntime', 0):.0f} | {per_call.get('grpc', 0):.0f} | {sum(per_call.values()):.0f} | "
            f"{faults[name] / calls:.1f} |"
        )
    print(br.uptime())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
