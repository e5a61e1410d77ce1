"""The steps of Rank's request path, each timed right after an ONNX Runtime run, as the server runs them.

At concurrency 1 every step of the event loop's work is on the critical path, and it runs right after ORT's run
(4 MB of weights, two threads) has evicted its caches: a numpy call that takes 2 us in a loop takes 10-30 us
there. This times the server's own functions (ranker_server.servicer / .dataplane / .features) on the benchmark's
request (bench_ranker's MMoE, 500 candidates, top 100), each right after a 500-row ORT run, the steps in rotating
order. Top-k is the exception: its lines sit inside ``RankDataPlane._rank_with``, so ``top_k`` below repeats them
(argsort, then ``take``) and is the same code for every checkout; only the score layout it reads (each
checkout's ``merge_scores``) differs. ``--code NAME=DIR`` times the same steps from another checkout, in its own processes, for a before/after;
the checkouts' processes alternate, and each step's figure is the median over them.

Run:  .venv/bin/python benchmarks/bench_rank_steps.py [--code before=/path/to/checkout] [--repeats 400]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

STEPS = ("parse", "checks", "rows", "merge", "top-k", "response")


def step_functions(package: Path, ids: np.ndarray) -> dict[str, Callable[[], object]]:
    """The request path's steps, with the server code importable from ``sys.path`` (this checkout or another)."""
    import bench_ranker as br

    from ranker_server.dataplane import AssignmentInfo, RankResult, check_query, merge_scores
    from ranker_server.features import ItemTable, build_rows
    from ranker_server.package import read_package
    from ranker_server.servicer import query_from_proto, result_to_proto

    read = read_package(package)
    table = ItemTable(read)
    try:  # Rank's rows when the package has factored graphs (ranker_server.factored)
        from ranker_server.features import user_item_rows
    except ImportError:  # a checkout from before them: every Rank builds full rows
        user_item_rows = None
    request = br.rank_request(ids)
    query = query_from_proto(request)
    rows = build_rows(read.layout, table, query.candidate_ids, query.user_sparse, query.user_dense,
                      query.candidate_sparse, query.candidate_dense)  # fmt: skip
    session = br.ort_session(package / "model.onnx", 2, "during runs")
    logits = session.run(["logits"], {"sparse": rows.sparse, "dense": rows.dense})[0]
    tasks = read.manifest.tasks
    # An array, not the tuple LoadedModel now holds: older checkouts' merge_scores negate it with ``~``.
    model = SimpleNamespace(task_names=tuple(t.name for t in tasks),
                            binary_tasks=np.array([t.type == "binary" for t in tasks]))  # fmt: skip
    weights = {tasks[0].name: 1.0, tasks[1].name: 0.5}
    scores, merged = merge_scores(model, logits, weights)  # type: ignore[arg-type]

    def top_k() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = np.argsort(-merged, kind="stable")[: query.top_k]
        return scores.take(order, axis=1), merged.take(order), query.candidate_ids.take(order)

    task_scores, top_merged, ranked = top_k()
    assignment = AssignmentInfo("bench-ranking", "treatment", 1, "ranking", "")
    result = RankResult("0123456789abcdef0123456789abcdef", ranked, model.task_names, task_scores, top_merged,
                        (assignment,), ("bench-mmoe", "1"), None)  # fmt: skip
    return {
        "parse": lambda: query_from_proto(request),
        "checks": lambda: check_query(query, 10_000),
        "rows": (
            (lambda: user_item_rows(read.layout, table, query.candidate_ids, query.user_sparse, query.user_dense))
            if user_item_rows is not None and (package / "factored").is_dir()
            else lambda: build_rows(read.layout, table, query.candidate_ids, query.user_sparse, query.user_dense,
                                    query.candidate_sparse, query.candidate_dense)  # fmt: skip
        ),
        "merge": lambda: merge_scores(model, logits, weights),  # type: ignore[arg-type]
        "top-k": top_k,
        "response": lambda: result_to_proto(result).SerializeToString(),
        "ort": lambda: session.run(["logits"], {"sparse": rows.sparse, "dense": rows.dense}),
    }


def measure(package: Path, repeats: int) -> dict[str, float]:
    """p50 microseconds of each step, each right after an ORT run."""
    import ranker_server  # before bench_ranker, which puts this checkout's root first on sys.path

    assert Path(ranker_server.__file__).resolve().is_relative_to(Path.cwd().resolve()), ranker_server.__file__
    ids = np.load(package / "ids.npy")
    steps = step_functions(package, ids)
    ort = steps.pop("ort")
    times: dict[str, list[float]] = {name: [] for name in STEPS}
    for r in range(repeats):
        for name in STEPS[r % len(STEPS) :] + STEPS[: r % len(STEPS)]:
            ort()
            started = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) * 1e6 for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                        help="also time the steps of the checkout in DIR")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=400, help="timed calls per step")
    parser.add_argument("--rounds", type=int, default=5, help="processes per checkout, alternating")
    parser.add_argument("--package", type=Path, help=argparse.SUPPRESS)  # a child process: measure, print JSON
    args = parser.parse_args(argv)
    if args.package:
        print(json.dumps(measure(args.package, args.repeats)))
        return 0
    import bench_ranker as br

    here = Path(__file__).resolve().parents[1]
    checkouts = {"this tree": here, **{n: Path(d) for n, d in (c.split("=", 1) for c in args.code)}}
    with tempfile.TemporaryDirectory() as tmp:
        package = br.write_package(br.build_model(), Path(tmp))
        ids, _, _ = br.request_rows(package, 500, np.random.default_rng(1))
        np.save(package / "ids.npy", ids)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
        for _, (name, code) in itertools.product(range(args.rounds), checkouts.items()):
            # The checkout's own ranker_server first on the path; the benchmark helpers come from this one.
            script = (f"import sys; sys.path[:0] = [{str(code)!r}, {str(here / 'benchmarks')!r}]; "
                      f"import runpy; sys.argv = ['bench_rank_steps', '--package', {str(package)!r}, "
                      f"'--repeats', '{args.repeats}']; runpy.run_path({str(Path(__file__).resolve())!r}, "
                      f"run_name='__main__')")  # fmt: skip
            out = subprocess.run([sys.executable, "-c", script], cwd=code, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    # Processes minutes apart run at different speeds on a shared VM: the median over alternating processes.
    results = {name: {step: float(np.median([r[step] for r in rs])) for step in STEPS} for name, rs in runs.items()}
    print(f"p50 microseconds per step, each right after a 500-row ORT run; {args.repeats} calls per step; median of "
          f"{args.rounds} processes per checkout, alternating")  # fmt: skip
    print("| step | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for step in (*STEPS, "total"):
        cells = [f"{sum(r.values()) if step == 'total' else r[step]:.1f}" for r in results.values()]
        print(f"| {step} | " + " | ".join(cells) + " |")
    print(br.uptime())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
