"""SSMTL vs the retrieval-only GAT (beta = gamma = 0) on ego-Facebook held-out friendships, several seeds.

Both variants share everything but the loss weights: same edge split per seed (85/5/10, see
models/graph/split.py), same initialisation seed, same steps and checkpoint selection (best validation
Recall@50). Writes benchmarks/results/ssmtl.json (every run) and ssmtl.md (mean +- std and the paired delta).

    nice -n 10 python benchmarks/bench_ssmtl.py --seeds 5 --steps 100 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from models.graph.training import TrainConfig, evaluate, load_graph, save_checkpoint, train

RESULTS = Path(__file__).parent / "results"
METRICS = ("recall@10", "recall@50", "recall@100", "mrr", "ndcg@50")
VARIANTS = {
    "retrieval-only": {"beta": 0.0, "gamma": 0.0},
    "ssmtl": {},
    "retrieval+cca": {"gamma": 0.0},
    "retrieval+mae": {"beta": 0.0},
}
CONFIG_KEYS = ("hidden_dim", "embed_dim", "heads", "fanouts", "temperature", "ssl_nodes", "alpha", "beta", "gamma",
               "cca_lambda", "mae_exponent", "edge_drop", "feature_drop")


def _fmt(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "n/a"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _comparison(runs: list[dict], treatment: str) -> list[str]:
    """Rows of one treatment against retrieval-only over the seeds both have."""
    seeds = sorted({r["seed"] for r in runs if r["variant"] == treatment}
                   & {r["seed"] for r in runs if r["variant"] == "retrieval-only"})
    if not seeds:
        return []
    by = {(r["variant"], r["seed"]): r for r in runs}
    lines = [
        f"## {treatment} vs retrieval-only ({len(seeds)} paired seeds: {', '.join(map(str, seeds))})",
        "",
        f"| slice | users (seed {seeds[0]}) | metric | retrieval-only | {treatment} | delta | wins |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for slice_name, first in by[(treatment, seeds[0])]["test"].items():
        for metric in METRICS:
            base = [by[("retrieval-only", s)]["test"][slice_name][metric] for s in seeds]
            other = [by[(treatment, s)]["test"][slice_name][metric] for s in seeds]
            delta = [b - a for a, b in zip(base, other, strict=True)]
            wins = sum(d > 0 for d in delta)
            lines.append(f"| {slice_name} | {first['users']} | {metric} | {_fmt(base)} | {_fmt(other)} | "
                         f"{_fmt(delta)} | {wins}/{len(seeds)} |")
    config = by[(treatment, seeds[0])]["config"]
    lines += ["", f"{treatment} config: " + ", ".join(f"{k}={config[k]}" for k in CONFIG_KEYS) + ".", ""]
    return lines


def write_table(runs: list[dict], args: argparse.Namespace, path: Path) -> None:
    """Markdown: per treatment, slice and metric, mean ± std over seeds and the paired delta to retrieval-only."""
    lines = [
        "# SSMTL vs retrieval-only GAT on ego-Facebook (held-out friendships)",
        "",
        f"Command: `nice -n 10 python benchmarks/bench_ssmtl.py --seeds {args.seeds} --steps {args.steps} "
        f"--batch-size {args.batch_size} --eval-every {args.eval_every} --variants {' '.join(args.variants)}"
        + "".join(f" --set {item}" for item in args.set) + "`; "
        f"{args.steps} steps of {args.batch_size} pairs, 1 CPU thread ({platform.processor() or platform.machine()}).",
        "Split: random 85/5/10 of the 88,234 friendships per seed; ranking over all 4,039 users excluding the user "
        "and its train+validation friends; slices by training degree. Delta = variant − retrieval-only, paired by "
        "seed (mean ± std; wins = seeds where the variant is higher).",
        "",
    ]
    for treatment in args.variants:
        if treatment != "retrieval-only":
            lines += _comparison(runs, treatment)
    seconds = {v: statistics.mean(r["train_seconds"] for r in runs if r["variant"] == v)
               for v in args.variants if any(r["variant"] == v for r in runs)}
    lines.append("Mean training time per run: " + ", ".join(f"{v} {s:.0f} s" for v, s in seconds.items()) + ".")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--data-path", default=TrainConfig().data_path)
    parser.add_argument("--out", default=str(RESULTS / "ssmtl"), help="output path without extension")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["retrieval-only", "ssmtl"],
                        help="variants to train per seed (retrieval-only is the baseline of every comparison)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model config override for both variants, e.g. hidden_dim=64 fanouts=[5,3]")
    parser.add_argument("--checkpoints", type=Path, help="also save each run's checkpoint into this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = TrainConfig(
        data_path=args.data_path, steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every
    )
    graph = load_graph(base)
    shared = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    runs: list[dict] = []
    for seed in range(args.seeds):
        for variant in args.variants:
            overrides = VARIANTS[variant]
            config = base.model_copy(update={"seed": seed, "model": {**shared, **overrides}})
            started = time.perf_counter()
            result = train(config, graph=graph, progress=False)
            seconds = time.perf_counter() - started
            if args.checkpoints:
                args.checkpoints.mkdir(parents=True, exist_ok=True)
                save_checkpoint(result, args.checkpoints / f"{variant}-seed{seed}.pt")
            runs.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "train_seconds": seconds,
                    "history": result.history,
                    "config": result.model.training_config(),
                    "test": evaluate(result, "test"),
                }
            )
            logging.info("%s seed %d: test %s (%.0f s)", variant, seed, runs[-1]["test"]["overall"], seconds)
            # Write after every run so an interrupted benchmark keeps what it measured.
            out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1, default=str))
            write_table(runs, args, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
