"""GRec routing comparison in the spirit of the paper's Table 1, on census-income (two tasks).

Token vs sentence vs task vs task-sentence routing of GRec's sparse MoE (8 experts, top-4, the paper's expert
capacity: 2 tokens for 5-token sequences, i.e. capacity factor 0.8), plus MMoE with 4 experts (Table 1's
baseline): test AUC per task and routing FLOPs per row (the gating network, summed over the two task passes;
expert FLOPs are reported next to it, see ``models.grec.RoutingFlops``).

Data and protocol as in ``bench_census_csrec`` (test file only, random 8:1:1 split, Adam 1e-3, batch 1024,
early stopping on mean validation AUC). The task sentence of a row is [task token, ``class_worker`` token]:
census has no order "flow", and the class of worker (private, self-employed, government, ...) is the closest
per-row descriptor of the same kind. The 33 categorical columns are grouped into 4 deep tokens, so a sequence
has 7 tokens (task, class_worker, wide, 4 deep), close to the paper's 5; widths are scaled down (d_model 16)
and training uses a random 30,000-row subset of the training split, at most 4 epochs (patience 1) and 2 seeds:
the machine's 2 cores were shared by 8 jobs (load ~17) when this ran.

Usage:
    nice -n 10 .venv/bin/python -m benchmarks.bench_grec_routing --data ../shared/data/census-income-kdd
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models  # noqa: F401  (registers the baselines)
import models.grec  # noqa: F401  (registers grec)
from benchmarks.bench_census_csrec import RunResult, summarize, train_with_hooks
from models.data import Splits, load_dataset
from models.grec import ROUTING_MODES
from models.registry import create_model

GREC = {
    "d_model": 16,
    "n_heads": 2,
    "ff_mult": 2,
    "n_experts": 8,
    "top_k": 4,
    "capacity_factor": 0.8,
    "expert_hidden": 32,
    "tower_hidden": (32,),
    "aux_task_columns": ("class_worker",),
    "deep_tokens": 4,
}
MMOE = {"n_experts": 4, "expert_dims": (64,), "tower_dims": (32,), "dropout": 0.0}
PAPER_TABLE_1 = {  # average precision CTR / CTCVR / ATC / CVR and routing FLOPs, internal data
    "mmoe 4/4 sentence": ("2.1M", (64.15, 79.02, 55.73, 84.17)),
    "token": ("4.1M", (64.53, 80.72, 56.23, 84.63)),
    "sentence": ("4.1M", (64.12, 78.95, 55.12, 83.67)),
    "task": ("1.0M", (64.26, 79.24, 55.21, 84.24)),
    "task_sentence": ("2.1M", (64.51, 80.71, 56.85, 84.94)),
}


def variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """Label -> (registry name, options)."""
    out = {mode: ("grec", {**GREC, "routing": mode}) for mode in ROUTING_MODES}
    out["mmoe"] = ("mmoe", MMOE)
    return out


def flops_table(splits: Any) -> dict[str, dict[str, int]]:
    """Routing FLOPs per row of every variant (data independent; MMoE: its softmax gates)."""
    table = {}
    for label, (name, options) in variants().items():
        model = create_model(name, features=splits.train.features, tasks=splits.train.tasks, **options)
        if name == "grec":
            flops = model.routing_flops()
            table[label] = {**asdict(flops), "total": flops.total}
        else:
            d_in, t = splits.train.features.d_in, len(splits.train.tasks)
            table[label] = {"mode": "sentence (dense gates)", "router": t * 2 * d_in * options["n_experts"]}
    return table


def markdown(summary: dict, flops: dict, n_seeds: int, n_rows: Sequence[int]) -> str:
    lines = [
        f"Census-income, test file only, split 8:1:1 (train subset {n_rows[0]}, val {n_rows[1]}, test {n_rows[2]}),"
        f" {n_seeds} seeds, test AUC mean ± std (sem). FLOPs per row, both task passes.",
        "",
        "| variant | AUC income | AUC never_married | routing FLOPs | expert FLOPs (slots / used) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, metrics in summary.items():
        inc, mar, f = metrics["auc/income"], metrics["auc/never_married"], flops[label]
        experts = f"{f['experts']:,} / {f['experts_used']:,}" if "experts" in f else "all 4 experts dense"
        lines.append(
            f"| {label} | {inc['mean']:.4f} ± {inc['std']:.4f} ({inc['sem']:.4f}) "
            f"| {mar['mean']:.4f} ± {mar['std']:.4f} ({mar['sem']:.4f}) | {f['router']:,} | {experts} |"
        )
    lines += ["", "Paper Table 1 (internal data, AP CTR/CTCVR/ATC/CVR, routing FLOPs):"]
    lines += [f"- {k}: {v[0]}, AP {v[1]}" for k, v in PAPER_TABLE_1.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/data/census-income-kdd", help="census-income directory")
    parser.add_argument("--variants", nargs="+", default=list(variants()), choices=list(variants()))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--train-rows", type=int, default=30000, help="random subset of the training split (0: all of it)"
    )
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("models").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    splits = load_dataset("census", args.data, args.split_seed)
    if 0 < args.train_rows < len(splits.train):
        keep = np.random.default_rng(args.split_seed).permutation(len(splits.train))[: args.train_rows]
        splits = Splits(splits.train.subset(np.sort(keep)), splits.val, splits.test)
    n_rows = (len(splits.train), len(splits.val), len(splits.test))
    flops = flops_table(splits)
    table = variants()
    results: list[RunResult] = []
    args.output.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for label in args.variants:
            name, options = table[label]
            result = train_with_hooks(
                name,
                options,
                splits,
                seed,
                args.batch_size,
                max_epochs=args.max_epochs,
                patience=args.patience,
            )
            result.model = label
            results.append(result)
            print(
                f"{label} seed {seed}: {result.test} (best epoch {result.best_epoch}, {result.seconds:.0f}s)"
            )
            summary = summarize(results)
            report = {
                "protocol": {
                    "data": "census-income test file only, random 8:1:1 split",
                    "split_seed": args.split_seed,
                    "rows": n_rows,
                    "batch_size": args.batch_size,
                    "max_epochs": args.max_epochs,
                    "patience": args.patience,
                    "variants": {k: table[k] for k in args.variants},
                },
                "routing_flops_per_row": flops,
                "paper_table_1": PAPER_TABLE_1,
                "summary": summary,
                "seconds": {k: float(np.mean([r.seconds for r in results if r.model == k])) for k in summary},
                "runs": [r.__dict__ for r in results],
            }
            (args.output / "grec_routing.json").write_text(json.dumps(report, indent=2))
            (args.output / "grec_routing.md").write_text(markdown(summary, flops, len(args.seeds), n_rows))
    print(markdown(summarize(results), flops, len(args.seeds), n_rows))


if __name__ == "__main__":
    main()
