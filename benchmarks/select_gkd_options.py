"""Choose DML's GKD regularisation on ML-100k *validation* (docs/models/dml.md, "GKD and dropout").

MMoE, MMoE+GKD and MMoE+DML with the deliberate options of ``DMLConfig`` (no dropout on the global knowledge,
zero-initialised GKD output, L2 on GKD's weights, no dropout in CTFM/GKD at all), every run for a fixed number
of epochs; per epoch the validation and test metrics and the rating train/eval shift are kept. The summary
reads every run at its best validation epoch (``sum(AUC) - MSE``) and averages over seeds; only validation
numbers decide. Usage (resumable, one thread):

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/select_gkd_options.py \\
        /work/shared/data/movielens-100k 25 benchmarks/results/dml_gkd_options.json \\
        mmoe,gkd,gkd-drop0,gkd-zero,gkd-l2,gkd-all,dml,dml-gkd0,dml-drop0 0,1,2
    .venv/bin/python benchmarks/select_gkd_options.py --report benchmarks/results/dml_gkd_options.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from models.errors import DataError
from models.evaluate import evaluate_model, predict
from models.metrics import selection_score

OPTIONS = {
    "mmoe": ("mmoe", {}),
    "gkd": ("mmoe+gkd", {}),
    "gkd-drop0": ("mmoe+gkd", {"gkd_dropout": 0.0}),
    "gkd-zero": ("mmoe+gkd", {"gkd_zero_init": True}),
    "gkd-l2": ("mmoe+gkd", {"gkd_l2": 1e-4}),
    "gkd-all": ("mmoe+gkd", {"gkd_dropout": 0.0, "gkd_zero_init": True, "gkd_l2": 1e-4}),
    "dml": ("mmoe+dml", {}),
    "dml-all": ("mmoe+dml", {"gkd_dropout": 0.0, "gkd_zero_init": True, "gkd_l2": 1e-4}),
    "dml-gkd0": ("mmoe+dml", {"gkd_dropout": 0.0}),
    "dml-drop0": ("mmoe+dml", {"dml_dropout": 0.0}),
}


def run(data: Path, epochs: int, out: Path, names: list[str], seeds: list[int]) -> None:
    from models.data.movielens import load_movielens
    from models.train import TrainConfig, train_seed

    torch.set_num_threads(1)
    splits = load_movielens(data, seed=0)
    results = json.loads(out.read_text()) if out.exists() else {}

    @torch.no_grad()
    def shift(model: torch.nn.Module) -> float:
        val = splits.val
        eval_mean = predict(model, val, torch.device("cpu"))[:, 1].mean()
        model.train()
        draws = [
            np.concatenate([model(val.torch_batch(slice(s, s + 8192)))[:, 1].numpy() for s in range(0, len(val), 8192)])
            for _ in range(4)
        ]
        model.eval()
        return float(np.mean(draws) - eval_mean)

    def per_epoch(epoch: int, model: torch.nn.Module) -> dict:
        return {"test": evaluate_model(model, splits.test, torch.device("cpu")), "shift": shift(model)}

    for seed in seeds:
        for name in names:
            key = f"{name}|{seed}"
            if key in results:
                continue
            model, options = OPTIONS[name]
            config = TrainConfig(model=model, model_options=options, batch_size=512, lr=1e-3, max_epochs=epochs,
                                 patience=epochs, seeds=[seed], progress=False)  # fmt: skip
            started = time.perf_counter()
            results[key] = train_seed(config, splits, seed, per_epoch).history
            out.write_text(json.dumps(results))
            print(key, f"{time.perf_counter() - started:.0f}s", flush=True)


def report(path: Path) -> str:
    """Markdown: per option, seed means at each run's best validation epoch."""
    results = json.loads(path.read_text())
    lines = [
        "| option | model options | seeds | best epochs | val AUC | val MSE | test AUC | test MSE | rating shift |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, (model, options) in OPTIONS.items():
        runs = [h for k, h in results.items() if k.split("|")[0] == name]
        if not runs:
            continue
        best = [max(h, key=lambda e: selection_score(e["val"])) for h in runs]
        mean = {k: np.mean([b[p][m] for b in best]) for k, (p, m) in {
            "va": ("val", "auc/like"), "vm": ("val", "mse/rating"), "ta": ("test", "auc/like"),
            "tm": ("test", "mse/rating")}.items()}  # fmt: skip
        lines.append(
            f"| {name} | {model} {json.dumps(options)} | {len(runs)} | {','.join(str(b['epoch']) for b in best)} | "
            f"{mean['va']:.4f} | {mean['vm']:.4f} | {mean['ta']:.4f} | {mean['tm']:.4f} | "
            f"{np.mean([b['shift'] for b in best]):+.4f} |"
        )
    return "\n".join(lines) + "\n"


def option_names(text: str) -> list[str]:
    """``OPTIONS`` names, comma-separated."""
    names = text.split(",")
    unknown = [name for name in names if name not in OPTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown option(s) {unknown}; allowed: {', '.join(OPTIONS)}")
    return names


def seed_list(text: str) -> list[int]:
    """Seeds, comma-separated."""
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are comma-separated integers, not {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="only print the summary of a results JSON"
    )
    parser.add_argument("data", type=Path, nargs="?", help="the movielens-100k folder")
    parser.add_argument("epochs", type=int, nargs="?", help="epochs of every run")
    parser.add_argument("out", type=Path, nargs="?", help="results JSON (runs already in it are skipped)")
    parser.add_argument(
        "names", type=option_names, nargs="?", help=f"options, comma-separated: {', '.join(OPTIONS)}"
    )
    parser.add_argument("seeds", type=seed_list, nargs="?", help="seeds, comma-separated (e.g. 0,1,2)")
    args = parser.parse_args(argv)
    if args.report is None and args.seeds is None:
        parser.error("give DATA EPOCHS OUT NAMES SEEDS, or --report JSON")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report is not None:
        print(report(args.report))
        return
    try:
        run(args.data, args.epochs, args.out, args.names, args.seeds)
    except DataError as exc:
        raise SystemExit(f"select_gkd_options: error: {exc}") from None


if __name__ == "__main__":
    main()
