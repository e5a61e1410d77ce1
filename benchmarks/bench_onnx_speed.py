"""Speed of exported models: onnxruntime (CPU) against PyTorch eager, per family, at batch 1, 100 and 500.

Both run in this process on the same inputs, one thread each (torch.set_num_threads(1), ORT intra-op 1),
in interleaved rounds so machine load hits both alike; the median over rounds of the mean latency per call is
reported, and the ratio torch / onnxruntime (> 1 means onnxruntime is faster). Models use their default
(paper-size) configs on a MovieLens-1M-like input (8 sparse columns with ML-1M vocabularies, 18 dense).

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_onnx_speed.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import models
from models.base import random_batch
from models.export import export_onnx
from models.layers import FeatureSpec, TaskSpec

SPEC = FeatureSpec(sparse_vocab_sizes=(6041, 3, 8, 22, 3440, 3953, 82, 19), n_dense=18, embedding_dim=8)
TASKS = (TaskSpec("like", "binary"), TaskSpec("rating", "regression"))


def default_families() -> list[str]:
    ranking = [n for n in models.list_models() if models.model_kind(n) == "ranking"]
    return [n for n in ranking if "+" not in n or n.endswith("+dml")]


def mean_call_seconds(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def bench_family(name: str, batches: list[int], rounds: int, budget_rows: int, workdir: Path) -> list[dict]:
    torch.manual_seed(0)
    model = models.create_model(name, features=SPEC, tasks=TASKS).eval()
    exported = model.for_export().eval()
    path = workdir / f"{name.replace('+', '_')}.onnx"
    export_onnx(exported, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = []
    for batch_size in batches:
        batch = random_batch(SPEC, batch_size, torch.Generator().manual_seed(batch_size))
        feeds = {"sparse": batch["sparse"].numpy(), "dense": batch["dense"].numpy()}
        calls = max(3, budget_rows // batch_size // rounds)

        def run_torch(batch: dict = batch) -> object:
            with torch.inference_mode():
                return model(batch)

        def run_ort(feeds: dict = feeds) -> object:
            return session.run(["logits"], feeds)

        diff = float(np.max(np.abs(run_ort()[0] - run_torch().numpy())))
        torch_times, ort_times = [], []
        for _ in range(rounds):
            torch_times.append(mean_call_seconds(run_torch, calls))
            ort_times.append(mean_call_seconds(run_ort, calls))
        t, o = statistics.median(torch_times), statistics.median(ort_times)
        rows.append({"family": name, "batch": batch_size, "torch_ms": t * 1e3, "onnxruntime_ms": o * 1e3,
                     "ratio_torch_over_ort": t / o, "calls_per_round": calls, "max_abs_diff": diff})  # fmt: skip
        print(f"{name:22s} batch {batch_size:4d}: torch {t * 1e3:8.3f} ms  ort {o * 1e3:8.3f} ms  "
              f"ratio {t / o:5.2f}  diff {diff:.1e}", flush=True)  # fmt: skip
    return rows


def markdown(rows: list[dict], settings: dict) -> str:
    lines = [
        "# ONNX Runtime vs PyTorch eager (benchmarks/bench_onnx_speed.py)",
        "",
        f"Settings: {json.dumps(settings)}",
        "",
        "Median over interleaved rounds of the mean latency per call, one thread each; ratio = torch / ORT.",
        "",
        "| family | batch | torch ms | onnxruntime ms | ratio | max abs diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['family']} | {r['batch']} | {r['torch_ms']:.3f} | {r['onnxruntime_ms']:.3f} | "
                     f"{r['ratio_torch_over_ort']:.2f} | {r['max_abs_diff']:.1e} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--families", nargs="+", default=None, help="registry names (default: every family + dml)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100, 500])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--rows-per-measure", type=int, default=5000, help="rows timed per batch size and engine"
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/onnx_speed"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    families = args.families or default_families()
    settings = {"batches": args.batches, "rounds": args.rounds, "rows_per_measure": args.rows_per_measure,
                "torch": torch.__version__, "onnxruntime": ort.__version__, "machine": platform.machine(),
                "note": "shared 2-core machine under load from other jobs; compare ratios, not absolute times"}  # fmt: skip
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in families:
            rows += bench_family(name, args.batches, args.rounds, args.rows_per_measure, Path(tmp))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    args.output.with_suffix(".md").write_text(markdown(rows, settings))
    print(markdown(rows, settings))


if __name__ == "__main__":
    main()
