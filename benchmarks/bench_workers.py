"""``python -m ranker_server --workers N`` on this machine: requests/s per core and p99, N side by side.

Both servers run at once on their own ports (the workers of one share its port through SO_REUSEPORT; the
kernel spreads connections, not requests, so the clients open several connections: one channel each, with
its own subchannel pool), with bench_ranker's model and 500-candidate Rank request, a running experiment
(assignment on) and their defaults otherwise (ORT intra-op threads = cores / N). Rounds interleave the servers:
concurrency 1 through a synchronous stub (p50, p99) and concurrency C through C grpc.aio callers spread over
``--connections`` channels (req/s, p50, p99).

``--server-cpus 0``: the servers run on those CPUs only and this client on the others, as a pod with that many
cores would (its ORT threads default to them): the capacity of a one-core pod, which the CPU overlay's HPA target
is taken from, without the client's own CPU in the figure.

Run:  flock /tmp/mtrank-bench.lock .venv/bin/python benchmarks/bench_workers.py [--workers 1 2] [--out table.md]
      flock /tmp/mtrank-bench.lock .venv/bin/python benchmarks/bench_workers.py --workers 1 --server-cpus 0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

import bench_ranker as br  # noqa: E402
import numpy as np  # noqa: E402
from bench_serving_peers import EXPERIMENTS  # noqa: E402
from tqdm import tqdm  # noqa: E402


def cpu_list(text: str) -> set[int]:
    """``0`` or ``0,1``: a set of CPU numbers."""
    try:
        return {int(part) for part in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers separated by commas, got {text!r}") from None


def free_ports(n: int) -> int:
    """A port P with P .. P+n-1 all free (worker i serves its metrics on P+i)."""
    while True:
        base = br.free_port()
        try:
            for i in range(n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue


def served_per_worker(metrics_port: int, n: int) -> list[int]:
    """Rank successes counted by each worker's own metrics endpoint."""
    counts = []
    for i in range(n):
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port + i}/metrics", timeout=10).read().decode()
        counts.append(
            int(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("mtrank_inference_request_success_total{")
                )
            )
        )
    return counts


def wait_for_workers(metrics_port: int, n: int, timeout_s: float = 120) -> None:
    """Until every worker has loaded its models (its snapshot swap is counted) and so bound the port."""
    deadline = time.monotonic() + timeout_s
    for i in range(n):
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port + i}/metrics", timeout=5).read().decode()
                if 'mtrank_snapshot_swaps_total{outcome="swapped"}' in text:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {i} did not load its models in {timeout_s:.0f} s")
            time.sleep(0.3)
    time.sleep(1.0)  # the swap precedes the bind by a few milliseconds


async def measure(args: argparse.Namespace, targets: dict[int, str], request) -> dict[int, dict[int, br.Result]]:
    import grpc
    from grpc import aio

    from proto import ranking_pb2_grpc

    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel, not one shared
    results = {n: {c: br.Result(f"--workers {n}, concurrency {c}") for c in (1, args.concurrency)} for n in targets}
    per_round = br.calls_per_round(args.requests, args.rounds)
    sync = {n: grpc.insecure_channel(t) for n, t in targets.items()}
    channels = {n: [aio.insecure_channel(t, options=options) for _ in range(args.connections)] for n, t in targets.items()}
    try:
        rank = {n: ranking_pb2_grpc.RankerStub(channel).Rank for n, channel in sync.items()}
        spread = {n: [ranking_pb2_grpc.RankerStub(c).Rank for c in chans] for n, chans in channels.items()}
        for n in targets:  # warm-up: every connection, every worker
            br.timed(br.Result("warm-up"), lambda n=n: rank[n](request, timeout=30), 20)
            await br.server_round(spread[n], request, br.Result("warm-up"), args.concurrency, 8 * args.concurrency)
        order = list(targets)
        for i in tqdm(range(args.rounds), desc="rounds"):
            for n in order[i % 2 :] + order[: i % 2]:
                br.timed(results[n][1], lambda n=n: rank[n](request, timeout=30), per_round)
                await br.server_round(spread[n], request, results[n][args.concurrency], args.concurrency, 2 * args.concurrency)
    finally:
        for channel in sync.values():
            channel.close()
        for chans in channels.values():
            for channel in chans:
                await channel.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--requests", type=int, default=400, help="timed calls per server at concurrency 1")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--connections", type=int, default=8, help="client connections per server")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--server-cpus", type=cpu_list, metavar="LIST",
                        help="run the servers on these CPUs (e.g. 0 or 0,1) and this client on the others")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    available = os.sched_getaffinity(0)
    if args.server_cpus:
        if not args.server_cpus < available:
            parser.error(f"--server-cpus: name some of the CPUs {sorted(available)}, leaving the client at least one")
        os.sched_setaffinity(0, available - args.server_cpus)
    cores = len(args.server_cpus or available)
    where = f"{cores} cores"
    if args.server_cpus:
        where = f"servers on CPUs {sorted(args.server_cpus)}, the client on the others"
    uptime_before = br.uptime()
    model = br.build_model()
    with tempfile.TemporaryDirectory() as tmp:
        package = br.write_package(model, Path(tmp))
        ids, _, _ = br.request_rows(package, args.candidates, np.random.default_rng(1))
        servers, targets, metrics_ports = [], {}, {}
        try:
            for n in args.workers:  # a fixed port: --workers > 1 needs one
                metrics_ports[n] = free_ports(n)
                extra = ["--workers", str(n)]
                proc, target = br.start_server(
                    Path(tmp), 0, metrics_ports[n], extra, EXPERIMENTS,
                    port=br.free_port(), cpus=args.server_cpus,
                )  # fmt: skip
                servers.append(proc)
                targets[n] = target
                wait_for_workers(metrics_ports[n], n)
            before = {n: served_per_worker(metrics_ports[n], n) for n in targets}
            results = asyncio.run(measure(args, targets, br.rank_request(ids)))
            shares = {
                n: [a - b for a, b in zip(served_per_worker(metrics_ports[n], n), before[n], strict=True)]
                for n in targets
            }
        finally:
            for proc in servers:
                proc.terminate()
            for proc in servers:
                proc.wait(30)
    uptime_after = br.uptime()
    c = args.concurrency
    lines = [
        f"bench_ranker's MMoE, {args.candidates} candidates/request, experiment on, no Kafka; {where}; "
        f"concurrency 1: {br.calls_per_round(args.requests, args.rounds) * args.rounds} calls per server "
        f"(sync stub); concurrency {c}: {2 * c * args.rounds} calls "
        f"over {args.connections} connections; {args.rounds} interleaved rounds.",
        "",
        f"| workers | ORT threads each | c=1 p50 ms | c=1 p99 ms | c={c} req/s | req/s per core | c={c} p50 ms | c={c} p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, by_c in results.items():
        lines.append(
            f"| {n} | {max(1, cores // n)} | {by_c[1].p50_ms:.3f} | {by_c[1].p99_ms:.3f} | {by_c[c].rps:.0f} | "
            f"{by_c[c].rps / cores:.0f} | {by_c[c].p50_ms:.3f} | {by_c[c].p99_ms:.3f} |"
        )
    lines.append("")
    for n, served in shares.items():
        lines.append(f"--workers {n}: Rank requests answered per worker during the run: {served}")
    lines += ["", f"uptime before: {uptime_before}", f"uptime after:  {uptime_after}"]
    br.emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
