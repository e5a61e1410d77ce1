"""What a lone run costs right after a burst, by what the burst ran (serving_peers.md, "Rank's first calls after the
bursts").

The ranker's lone runs use a spinning session with two intra-op threads; at concurrency 16 its requests run as
batches of up to four (2,000 rows) on a second, sleeping session with one thread. The work floor runs every request
alone (500 rows) on its one session. Here, in-process with bench_ranker's MMoE, each measured 500-row run on the
spinning session follows: one run on it (warm), four 500-row runs on it (the floor's burst), four 2,000-row runs on
it, four 500-row runs on the sleeping session, four 2,000-row runs on the sleeping session (the ranker's burst),
and the second run after those; optionally with both sessions allocating from one ONNX Runtime arena
(`session.use_env_allocators`, `--shared-arena`), without ORT's memory pattern (`--no-mem-pattern`: no allocation
plan cached per input shape) or without its CPU arena (`--no-arena`).

    .venv/bin/python benchmarks/results/tried/first_run_after_burst.py [--shared-arena] [--no-mem-pattern] [--no-arena]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks import bench_ranker as br  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-arena", action="store_true", help="both sessions allocate from one env arena")
    parser.add_argument("--no-mem-pattern", action="store_true", help="SessionOptions.enable_mem_pattern off")
    parser.add_argument("--no-arena", action="store_true", help="SessionOptions.enable_cpu_mem_arena off")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    if args.shared_arena:
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))
    package = br.write_package(br.build_model(), Path(tempfile.mkdtemp()))
    _, sparse, dense = br.request_rows(package, 500, np.random.default_rng(0))
    one = {"sparse": sparse, "dense": dense}
    four = {k: np.tile(v, (4, 1)) for k, v in one.items()}
    entries = [("session.use_env_allocators", "1")] if args.shared_arena else []
    allocation = {"mem_pattern": not args.no_mem_pattern, "cpu_arena": not args.no_arena}
    lone = br.ort_session(package / "model.onnx", 2, "during runs", entries, **allocation)
    other = br.ort_session(package / "model.onnx", 1, "off", entries, **allocation)
    for _ in range(10):
        lone.run(["logits"], one)
        other.run(["logits"], four)

    def runs(s: ort.InferenceSession, feeds: dict[str, np.ndarray], n: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(n):
                s.run(["logits"], feeds)

        return run

    def ranker_burst_then_one() -> None:
        runs(other, four, 4)()
        lone.run(["logits"], one)

    before: dict[str, Callable[[], None]] = {
        "after one run on it": runs(lone, one, 1),
        "after four 500-row runs on it (the floor's burst)": runs(lone, one, 4),
        "after four 2,000-row runs on it": runs(lone, four, 4),
        "after four 500-row runs on the other session": runs(other, one, 4),
        "after four 2,000-row runs on the other (the ranker's burst)": runs(other, four, 4),
        "the second run after the ranker's burst": ranker_burst_then_one,
    }
    measured: dict[str, list[float]] = {name: [] for name in before}
    for _ in range(args.rounds):
        for name, prepare in before.items():
            prepare()
            start = time.perf_counter()
            lone.run(["logits"], one)
            measured[name].append(time.perf_counter() - start)
    print(br.uptime())
    print(f"a 500-row run on the spinning session, p50 ms ({args.rounds} rounds; shared arena: {args.shared_arena}; "
          f"{allocation}):")  # fmt: skip
    for name, t in measured.items():
        print(f"  {name:60s} {np.median(t) * 1e3:.3f}")


if __name__ == "__main__":
    main()
