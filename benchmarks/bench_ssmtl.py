"""SSMTL vs the retrieval-only GAT (beta = gamma = 0) on ego-Facebook held-out friendships, paired seeds.

Every variant of a seed shares the edge split (random 85/5/10, plus the inductive cold-start users of
``--split cold-start``: models/graph/split.py), the initialisation seed, the steps and the checkpoint rule
(best validation Recall@50 overall, evaluated every ``--eval-every`` steps). Reports paired deltas to
retrieval-only (mean ± standard error over seeds) per slice of training degree and for the cold-start users,
the learning curves (seed-mean validation Recall@50) and the loss magnitudes during training (interval-mean
losses and each weighted Eq. 6 term's gradient norm on the encoder).

Resumable: runs already in ``--out``.json are skipped, so variants can be added later. Usage (one thread):

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_ssmtl.py --seeds 5 --steps 3000 \\
        --variants retrieval-only ssmtl --out benchmarks/results/ssmtl
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from models.graph.training import TrainConfig, evaluate, load_graph, save_checkpoint, train

RESULTS = Path(__file__).parent / "results"
METRICS = ("recall@50", "recall@10", "recall@100", "mrr", "ndcg@50")
SLICES = ("overall", "low (deg<=10)", "cold (deg<=2)", "cold-start users", "mid (11-50)", "high (>50)")
VARIANTS = {
    "retrieval-only": {"beta": 0.0, "gamma": 0.0},
    "ssmtl": {},
    "retrieval+cca": {"gamma": 0.0},
    "retrieval+mae": {"beta": 0.0},
}
BENCHMARK_MODEL = {"hidden_dim": 64, "embed_dim": 32, "fanouts": [5, 3]}  # as the demo's encoders
CONFIG_KEYS = ("hidden_dim", "embed_dim", "heads", "fanouts", "temperature", "ssl_nodes", "cca_nodes", "alpha",
               "beta", "gamma", "cca_lambda", "mae_exponent", "edge_drop", "feature_drop")  # fmt: skip


def _paired(runs: list[dict], treatment: str, slice_name: str, metric: str) -> tuple[float, float, int]:
    by = {(r["variant"], r["seed"]): r for r in runs}
    seeds = sorted({s for v, s in by if v == treatment} & {s for v, s in by if v == "retrieval-only"})
    d = np.array([by[(treatment, s)]["test"][slice_name][metric] - by[("retrieval-only", s)]["test"][slice_name][metric]
                  for s in seeds])  # fmt: skip
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se, len(d)


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def write_table(runs: list[dict], command: str, path: Path) -> None:
    """Markdown: paired deltas per slice and metric, learning curves, loss magnitudes."""
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    first = runs[0]
    lines = [
        "# SSMTL vs retrieval-only GAT on ego-Facebook (held-out friendships)",
        "",
        f"Command: `{command}`",
        "",
        f"Split: {first['train']['split']} (seed = run seed); ranking over all 4,039 users excluding the user and its "
        "train+validation friends; slices by training degree, plus the cold-start users. Checkpoint: best "
        "validation Recall@50 (overall). Δ = variant − retrieval-only paired by seed, mean ± standard error; "
        "**bold** when Δ > 2 se.",
        "",
        "## Test metrics",
        "",
        "| slice | users | metric | " + " | ".join(variants) + " | "
        + " | ".join(f"Δ {v}" for v in variants if v != "retrieval-only") + " |",
        "|---|---:|---|" + "---:|" * (2 * len(variants) - 1),
    ]  # fmt: skip
    for slice_name in SLICES:
        if slice_name not in first["test"]:
            continue
        for metric in METRICS:
            cells = [slice_name, str(first["test"][slice_name]["users"]), metric]
            for v in variants:
                cells.append(_mean_sd([r["test"][slice_name][metric] for r in runs if r["variant"] == v]))
            for v in variants:
                if v == "retrieval-only":
                    continue
                mean, se, n = _paired(runs, v, slice_name, metric)
                text = f"{mean:+.4f} ± {se:.4f} ({n})"
                cells.append(f"**{text}**" if mean > 2 * se else text)
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Learning curves: seed-mean validation Recall@50 (overall / low degree <= 10 / cold-start users)", ""]
    steps = [h["step"] for h in first["history"]]
    lines += ["| step | " + " | ".join(variants) + " |", "|---:|" + "---|" * len(variants)]
    for i, step in enumerate(steps):
        cells = []
        for v in variants:
            hs = [r["history"][i] for r in runs if r["variant"] == v and len(r["history"]) > i]
            keys = ("val_recall@50", "val_recall@50/low (deg<=10)", "val_recall@50/cold-start users")
            cells.append(" / ".join(f"{np.mean([h.get(k, np.nan) for h in hs]):.4f}" for k in keys))
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Loss magnitudes during training (seed means; losses are means over each evaluation interval, "
        "gradient norms of the weighted terms on the shared GAT encoder at the interval's last step)",
        "",
        "| variant | step | L_retrieval | L_CCA | L_MAE | β·L_CCA / α·L_ret | γ·L_MAE / α·L_ret | ‖∇ α·L_ret‖ | ‖∇ β·L_CCA‖ | ‖∇ γ·L_MAE‖ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        c = mine[0]["config"]
        for i in sorted({0, len(steps) // 4, len(steps) // 2, len(steps) - 1}):
            hs = [r["history"][i] for r in mine if len(r["history"]) > i]
            m = {k: float(np.mean([h[k] for h in hs])) for k in ("retrieval", "cca", "mae", "grad/retrieval",
                                                                 "grad/cca", "grad/mae")}  # fmt: skip
            ret = c["alpha"] * m["retrieval"]
            lines.append(
                f"| {v} | {steps[i]} | {m['retrieval']:.4f} | {m['cca']:.4f} | {m['mae']:.4f} | "
                f"{c['beta'] * m['cca'] / ret:.4f} | {c['gamma'] * m['mae'] / ret:.4f} | {m['grad/retrieval']:.4f} | "
                f"{m['grad/cca']:.4f} | {m['grad/mae']:.4f} |"
            )
    lines += ["", "Configs: " + "; ".join(
        f"{v}: " + ", ".join(f"{k}={next(r for r in runs if r['variant'] == v)['config'][k]}" for k in CONFIG_KEYS)
        for v in variants), ""]  # fmt: skip
    seconds = {v: np.mean([r["train_seconds"] for r in runs if r["variant"] == v]) for v in variants}
    lines.append("Mean training time per run (1 thread, shared machine): "
                 + ", ".join(f"{v} {s:.0f} s" for v, s in seconds.items()) + ".")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--split", choices=["random", "cold-start"], default="cold-start")
    parser.add_argument("--cold-users", type=int, default=500)
    parser.add_argument("--data-path", default=TrainConfig().data_path)
    parser.add_argument("--out", default=str(RESULTS / "ssmtl"), help="output path without extension")
    parser.add_argument("--also", nargs="*", default=[], help="other result JSONs merged into the report")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["retrieval-only", "ssmtl"],
                        help="variants to train per seed (retrieval-only is the baseline of every comparison)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model config override for every variant (after the benchmark's model size)")
    parser.add_argument("--checkpoints", type=Path, help="also save each run's checkpoint into this folder")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {"runs": []}
    command = state.get("command") or "OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_ssmtl.py " + (
        f"--seeds {args.seeds} --steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} "
        f"--eval-every {args.eval_every} --split {args.split} --cold-users {args.cold_users} "
        f"--variants {' '.join(args.variants)}" + "".join(f" --set {s}" for s in args.set)
    )
    state["command"] = command
    if not args.report_only:
        base = TrainConfig(data_path=args.data_path, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           eval_every=args.eval_every, split=args.split, cold_users=args.cold_users)  # fmt: skip
        graph = load_graph(base)
        shared = BENCHMARK_MODEL | {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
        done = {(r["variant"], r["seed"]) for r in state["runs"]}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for variant in args.variants:
                if (variant, seed) in done:
                    continue
                config = base.model_copy(update={"seed": seed, "model": {**shared, **VARIANTS[variant]}})
                started = time.perf_counter()
                result = train(config, graph=graph, progress=False)
                seconds = time.perf_counter() - started
                if args.checkpoints:
                    args.checkpoints.mkdir(parents=True, exist_ok=True)
                    save_checkpoint(result, args.checkpoints / f"{variant}-seed{seed}.pt")
                state["runs"].append({
                    "variant": variant, "seed": seed, "train_seconds": seconds, "history": result.history,
                    "config": result.model.training_config(), "train": config.model_dump(),
                    "test": evaluate(result, "test"),
                })  # fmt: skip
                logging.info("%s seed %d: %s (%.0f s)", variant, seed, state["runs"][-1]["test"]["overall"], seconds)
                # written after every run so an interrupted benchmark keeps what it measured
                out.with_suffix(".json").write_text(json.dumps(state, default=str))
    runs = list(state["runs"])
    for other in args.also:
        runs += json.loads(Path(other).read_text())["runs"]
    write_table(runs, command, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
