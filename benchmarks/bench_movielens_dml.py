"""Reproduce DML's Table 1 effect on MovieLens: backbones with and without DML, paired seeds, full curves.

Data: ML-100k (complete) and the ML-1M ratings prefix in shared/data (users 1-2999, ~49% of ML-1M), each split
8:1:1 at random once (split seed 0); seeds vary initialisation and batch order, and every variant of a seed is
paired with the backbone run of the same seed (mean +- standard error of the paired deltas).
Tasks: rating >= 4 (AUC) and rating (MSE). The paper's numbers are for full ML-1M with 20 runs.

Schedule: the paper's (Adam lr 1e-3, batch 512, embeddings 8, dropout 0.5, L2 1e-6 on embeddings), every run
trained for a fixed ``--max-epochs`` with validation *and* test metrics recorded after every epoch, so that
two checkpoint rules are read off the same runs (docs/models/dml.md, "protocol"):

* ``paper``: the reference code's early stopping, patience 3 on validation ``sum(AUC) - MSE``, best epoch kept
  (a run that was still improving at ``--max-epochs`` is counted as truncated);
* ``robust``: one epoch per (data set, model): the one where the seed-mean validation score peaks; every seed
  is read at that epoch. Single-seed noise in the stopping epoch (best epochs of 1..21 under patience) no
  longer decides a row.

Also recorded per epoch: the train/eval shift of the rating prediction (mean over validation of the train-mode
prediction, 4 dropout draws, minus the eval-mode prediction), the effect that makes GKD's sigmoid gate cost MSE.

Resumable: finished runs in the JSON file are skipped. Usage (one thread, background):

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python -m benchmarks.bench_movielens_dml --datasets ml-100k \\
        --backbones mmoe ple --variants base dml dml-reg --seeds 5 --max-epochs 40
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.fidelity import Paired, Verdict, combine, mean_sd, paired, verdict
from benchmarks.select_gkd_options import OPTIONS as GKD_OPTIONS
from benchmarks.select_gkd_options import report as report_gkd_options
from models.data import Splits
from models.data.movielens import load_movielens
from models.errors import DataError
from models.evaluate import evaluate_model, predict
from models.metrics import selection_score
from models.train import TrainConfig, train_seed

BACKBONES = ["single-task", "shared-bottom", "mmoe", "ple", "mssm"]
PAPER_TABLE_1 = {  # ML-1M (AUC, MSE): base -> +DML
    "single-task": ((0.8066, 0.7741), None),
    "shared-bottom": ((0.8100, 0.7724), (0.8115, 0.7648)),
    "mmoe": ((0.8105, 0.7688), (0.8135, 0.7591)),
    "ple": ((0.8122, 0.7606), (0.8151, 0.7533)),
    "mssm": ((0.8128, 0.7651), (0.8141, 0.7611)),
}
PAPER_TABLE_2 = {  # ML-1M (AUC, MSE) of the ablations
    "ple": {"ctfm": (0.8133, 0.7603), "gkd": (0.8137, 0.7574), "dml_v0": (0.8141, 0.7536)},
    "mssm": {"ctfm": (0.8134, 0.7654), "gkd": (0.8129, 0.7636), "dml_v0": (0.8138, 0.7625)},
}
DATASETS = {"ml-100k": "movielens-100k", "ml-1m-partial": "movielens-1m"}
# Deliberate GKD regularisation (docs/models/dml.md): no dropout on the global knowledge GK^k. Chosen on ML-100k
# validation among gkd_dropout=0, zero-initialised output, L2 1e-4 and dml_dropout=0 (benchmarks/results/dml.md).
GKD_REG: dict[str, Any] = {"gkd_dropout": 0.0}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {  # name -> (registry suffix, model options)
    "base": ("", {}),
    "dml": ("+dml", {}),
    "dml-reg": ("+dml", GKD_REG),
    "ctfm": ("+ctfm", {}),
    "gkd": ("+gkd", {}),
    "gkd-reg": ("+gkd", GKD_REG),
    "dml_v0": ("+dml_v0", {}),
}
PATIENCE = 3  # the reference code's --early_stop 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--backbones", nargs="+", default=["mmoe", "ple"], choices=BACKBONES)
    parser.add_argument("--variants", nargs="+", default=["base", "dml", "dml-reg"], choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per configuration")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--max-epochs", type=int, default=40, help="every run trains this many epochs")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/dml"))
    parser.add_argument(
        "--also", nargs="*", type=Path, default=[], help="other result JSONs to merge in the report"
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from the JSON(s)")
    parser.add_argument(
        "--gkd-options",
        type=Path,
        default=Path(__file__).parent / "results" / "dml_gkd_options.json",
        help="results of benchmarks/select_gkd_options.py, summarised in the report when present",
    )
    return parser.parse_args(argv)


@torch.no_grad()
def rating_shift(model: torch.nn.Module, splits: Splits, device: torch.device, draws: int = 4) -> float:
    """Mean train-mode (dropout on) minus eval-mode prediction of the regression task on validation."""
    data = splits.val
    column = next(t for t, task in enumerate(data.tasks) if task.type == "regression")
    eval_mean = float(predict(model, data, device)[:, column].mean())
    model.train()
    total = 0.0
    for _ in range(draws):
        for start in range(0, len(data), 8192):
            batch = {k: v.to(device) for k, v in data.torch_batch(slice(start, start + 8192)).items()}
            total += float(model(batch)[:, column].sum())
    model.eval()
    return total / (draws * len(data)) - eval_mean


def run_one(splits: Splits, model: str, options: dict[str, Any], seed: int, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    config = TrainConfig(
        model=model,
        dataset="movielens",
        model_options=options,
        batch_size=args.batch_size,
        max_epochs=args.max_epochs,
        patience=args.max_epochs,  # never stop: both checkpoint rules are read off the full curve
        lr=args.lr,
        seeds=[seed],
        device=args.device,
        progress=False,
    )

    def per_epoch(epoch: int, net: torch.nn.Module) -> dict[str, Any]:
        return {"test": evaluate_model(net, splits.test, device), "shift": rating_shift(net, splits, device)}

    started = time.perf_counter()
    result = train_seed(config, splits, seed, per_epoch)
    seconds = time.perf_counter() - started
    return {"seed": seed, "model": model, "options": options, "seconds": seconds, "history": result.history}


# ---- checkpoint rules -------------------------------------------------------------------------------------


def paper_epoch(history: list[dict]) -> tuple[int, bool]:
    """Best epoch under patience-3 early stopping, and whether the run would still have been going."""
    best, best_score = 0, -math.inf
    for entry in history:
        score = selection_score(entry["val"])
        if score > best_score:
            best, best_score = entry["epoch"], score
        elif entry["epoch"] - best >= PATIENCE:
            return best, False
    return best, True


def robust_epoch(histories: list[list[dict]]) -> int:
    """The epoch whose seed-mean validation score is highest (all runs share the epoch count)."""
    n = min(len(h) for h in histories)
    means = [np.mean([selection_score(h[e]["val"]) for h in histories]) for e in range(n)]
    return int(np.argmax(means))


def read(runs: dict[str, dict], dataset: str, model_key: str) -> dict[int, list[dict]]:
    prefix = f"{dataset}|{model_key}|"
    return {r["seed"]: r["history"] for k, r in runs.items() if k.startswith(prefix)}


def at_rule(histories: dict[int, list[dict]], rule: str) -> dict[int, dict]:
    """Per seed: the history entry the rule picks."""
    if rule == "paper":
        return {s: h[paper_epoch(h)[0]] for s, h in histories.items()}
    epoch = robust_epoch(list(histories.values()))
    return {s: h[epoch] for s, h in histories.items()}


def model_key(backbone: str, variant: str) -> str:
    return f"{backbone}{VARIANTS[variant][0]}" + ("" if not VARIANTS[variant][1] else f"[{variant}]")


# ---- report ---------------------------------------------------------------------------------------------


def _delta(base: dict[int, dict], other: dict[int, dict], metric: str) -> Paired:
    """Paired test-metric delta (other − base) over the seeds both have."""
    seeds = sorted(set(base) & set(other))
    return paired([other[s]["test"][metric] - base[s]["test"][metric] for s in seeds])


TARGET_DATASET, TARGET_BACKBONES, JUDGED_RULE = "ml-1m-partial", ("mmoe", "ple"), "robust"
PROTOCOL_GAPS = [  # what the paper's ML-1M experiment has that these runs do not (docs/models/dml.md)
    "data: the ML-1M *prefix* in shared/data (users 1-2999, 487,650 ratings, ~49% of ML-1M) and ML-100k, "
    "not full ML-1M; the paper's absolute numbers are therefore not comparable, only the sign and size of Δ",
    "runs: 20 per row in the paper (their spread is not published); here at most 5 seeds, fewer where the "
    "CPU queue did not get to them (the seed counts are in every row)",
    "features: not listed in the paper; ours are the reference notebook's minus title tokens",
    "initialisation: TF1 glorot-uniform kernels in the reference code, PyTorch defaults here",
    "stopping: the paper gives none; the reference code's patience 3 is the `paper` rule, "
    "fixed-length runs read at the seed-mean best validation epoch are the `robust` rule",
]


def verdict_table(runs: dict[str, dict], dataset: str, backbones: tuple[str, ...]) -> list[str]:
    """Paired ΔMSE / ΔAUC per variant and backbone under both rules, the verdict, and one line per variant."""
    lines = [
        "| variant | backbone | rule | seeds base / variant | ΔMSE | per seed | paper ΔMSE | ΔAUC | per seed "
        "| paper ΔAUC | verdict |",
        "|---|---|---|---|---|---|---:|---|---|---:|---|",
    ]
    overall = []
    for variant in ("dml", "dml-reg"):
        judged: list[Verdict] = []
        for backbone in backbones:
            base = read(runs, dataset, model_key(backbone, "base"))
            hist = read(runs, dataset, model_key(backbone, variant))
            for rule in (JUDGED_RULE, "paper"):
                pair = (at_rule(base, rule), at_rule(hist, rule)) if base and hist else ({}, {})
                mse, auc = _delta(*pair, "mse/rating"), _delta(*pair, "auc/like")
                result = verdict(mse, "lower", auc, "higher")
                if rule == JUDGED_RULE:
                    judged.append(result)
                lines.append(
                    f"| {variant} | {backbone} | {rule} | {sorted(base)} / {sorted(hist)} | {mse.text()} | "
                    f"{mse.per_seed()} | {_paper_delta(backbone, variant, 1)} | {auc.text()} | {auc.per_seed()} | "
                    f"{_paper_delta(backbone, variant, 0)} | "
                    f"{result.text() if rule == JUDGED_RULE else result.status} |"
                )
        status = combine(judged)
        overall.append(f"* **{variant}**: {status} ({' and '.join(backbones)}, `{JUDGED_RULE}` rule)")
    return lines + ["", *overall, ""]


def targets(runs: dict[str, dict]) -> list[str]:
    """The issue's DML target per variant: ΔMSE < 0 by > 2 se for MMoE and PLE, ΔAUC not lower by > 2 se."""
    return [
        "## Target (issue #16) and verdict",
        "",
        f"MSE lower than the backbone for {' and '.join(TARGET_BACKBONES)} on `{TARGET_DATASET}` by > 2 se, "
        "with AUC not lower (read as: ΔAUC not below zero by > 2 se). Judged on the "
        f"`{JUDGED_RULE}` rule; the `paper` rule is shown under it. `dml` is the paper's model (the reference "
        f"code's dropout everywhere), `dml-reg` our deliberate GKD regularisation {json.dumps(GKD_REG)}.",
        "",
        *verdict_table(runs, TARGET_DATASET, TARGET_BACKBONES),
    ]


def gkd_option_runs(path: Path) -> dict[str, dict]:
    """select_gkd_options.py's ML-100k runs under this benchmark's run keys, where an option is a variant here."""
    runs = {}
    for key, history in json.loads(path.read_text()).items():
        name, seed = key.split("|")
        model, options = GKD_OPTIONS[name]
        backbone, _, _ = model.partition("+")
        for variant, (suffix, variant_options) in VARIANTS.items():
            if backbone + suffix == model and variant_options == options:
                key = f"ml-100k|{model_key(backbone, variant)}|{seed}"
                runs[key] = {"seed": int(seed), "history": history}
    return runs


def markdown(state: dict, args: argparse.Namespace) -> str:
    runs = state["runs"]
    lines = [
        "# DML on MovieLens (benchmarks/bench_movielens_dml.py)",
        "",
        f"Settings: `{json.dumps(state['settings'])}` (epochs per run: "
        + ", ".join(f"{d} {_epochs(runs, d)}" for d in DATASETS if _epochs(runs, d))
        + "). Paper: Ren et al., ORSUM@RecSys 2023, Tables 1-2 (full ML-1M, 20 runs).",
        "",
        *targets(runs),
        "AUC = rating>=4 (higher is better), MSE = rating (lower is better), test split; mean ± sd over seeds.",
        "Δ = paired (variant − backbone) over the same seeds, mean ± standard error; **bold** when |Δ| > 2 se.",
        "rating shift = mean train-mode (dropout on) minus eval-mode rating prediction on validation at the "
        "chosen epoch: the train/eval mismatch that GKD's sigmoid gate over dropped-out inputs creates.",
        f"Rules: `paper` = patience-{PATIENCE} early stopping per run; `robust` = the epoch of the best "
        "seed-mean validation score, all seeds read there. GKD_REG = " + json.dumps(GKD_REG) + ".",
        "",
    ]
    for dataset in DATASETS:
        if not any(k.startswith(f"{dataset}|") for k in runs):
            continue
        lines += [f"## {dataset}", ""]
        for rule in ("robust", "paper"):
            lines += [
                f"### checkpoint rule: {rule}",
                "",
                "| model | seeds | epoch(s) | AUC | ΔAUC | paper ΔAUC | MSE | ΔMSE | paper ΔMSE | rating shift "
                "| paper AUC / MSE (full ML-1M) |",
                "|---|---:|---|---|---|---:|---|---|---:|---:|---:|",
            ]
            for backbone in BACKBONES:
                base = read(runs, dataset, model_key(backbone, "base"))
                for variant in VARIANTS:
                    hist = read(runs, dataset, model_key(backbone, variant))
                    if not hist:
                        continue
                    picked = at_rule(hist, rule)
                    epochs = sorted(e["epoch"] for e in picked.values())
                    truncated = sum(paper_epoch(h)[1] for h in hist.values()) if rule == "paper" else 0
                    epoch_text = ",".join(map(str, epochs)) if rule == "paper" else str(epochs[0])
                    if truncated:
                        epoch_text += f" ({truncated} still improving)"
                    cells = [model_key(backbone, variant), ",".join(map(str, sorted(picked))), epoch_text]
                    for metric, idx in (("auc/like", 0), ("mse/rating", 1)):
                        cells.append(mean_sd([e["test"][metric] for e in picked.values()]))
                        if variant == "base" or not base:
                            cells += ["", ""]
                            continue
                        delta = _delta(at_rule(base, rule), picked, metric)
                        text = delta.text()
                        cells.append(f"**{text}**" if abs(delta.mean) > 2 * delta.se else text)
                        cells.append(_paper_delta(backbone, variant, idx))
                    cells.append(f"{np.mean([e['shift'] for e in picked.values()]):+.4f}")
                    cells.append(_paper_row(backbone, variant))
                    lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        lines += _curves(runs, dataset)
    if args.gkd_options.exists():
        lines += [
            "## GKD regularisation chosen on ML-100k validation (benchmarks/select_gkd_options.py)",
            "",
            "Each run read at its best validation epoch (`sum(AUC) - MSE`) of 25 (a best epoch of 23-24 means the "
            "run was still improving when it stopped); only validation decides. "
            "`dml-reg` uses the DML option with the best validation score (and MSE) among the rows with 3 seeds; "
            "note that no DML row reaches the plain MMoE's validation MSE there.",
            "",
            report_gkd_options(args.gkd_options),
            "The same paired comparison as the target, on these ML-100k runs (MMoE only, 25 epochs; not the "
            "issue's target data, and `dml-reg` was chosen on their validation, so its row is optimistic):",
            "",
            *verdict_table(gkd_option_runs(args.gkd_options), "ml-100k", ("mmoe",)),
        ]
    lines += [
        "## What the paper's setting has that ours does not",
        "",
        *(f"* {gap}" for gap in PROTOCOL_GAPS),
    ]
    lines += [
        "",
        "Paper Table 1 (full ML-1M, 20 runs, AUC / MSE): "
        + "; ".join(
            f"{b} {p[0][0]:.4f}/{p[0][1]:.4f}" + (f" -> +DML {p[1][0]:.4f}/{p[1][1]:.4f}" if p[1] else "")
            for b, p in PAPER_TABLE_1.items()
        ),
        "",
        "Earlier results (before this issue's fixes; patience-based stopping, other schedules): "
        "movielens_dml_ml100k.md, movielens_dml_ml1m_partial.md in this folder.",
        "",
    ]
    return "\n".join(lines)


def _epochs(runs: dict[str, dict], dataset: str) -> str:
    lengths = sorted({len(r["history"]) for k, r in runs.items() if k.startswith(f"{dataset}|")})
    return "/".join(map(str, lengths))


def _paper_row(backbone: str, variant: str) -> str:
    """The paper's absolute (AUC / MSE) for the same model, Table 1 or 2."""
    base, dml = PAPER_TABLE_1[backbone]
    row = {"base": base, "dml": dml, "dml-reg": dml}.get(variant)
    row = row or PAPER_TABLE_2.get(backbone, {}).get(variant.removesuffix("-reg"))
    return f"{row[0]:.4f} / {row[1]:.4f}" if row else "n/a"


def _paper_delta(backbone: str, variant: str, idx: int) -> str:
    base, dml = PAPER_TABLE_1[backbone]
    if variant in ("dml", "dml-reg") and dml:
        return f"{dml[idx] - base[idx]:+.4f}"
    ablation = PAPER_TABLE_2.get(backbone, {}).get(variant.removesuffix("-reg"))
    return f"{ablation[idx] - base[idx]:+.4f}" if ablation else "n/a"


def _curves(runs: dict[str, dict], dataset: str) -> list[str]:
    """Seed-mean validation curves (AUC, MSE) per model, every epoch."""
    models = sorted({k.split("|")[1] for k in runs if k.startswith(f"{dataset}|")})
    histories = {m: list(read(runs, dataset, m).values()) for m in models}
    n = max(min(len(h) for h in hs) for hs in histories.values())
    lines = [
        f"### {dataset}: seed-mean validation curves (AUC / MSE) by epoch",
        "",
        "| epoch | " + " | ".join(models) + " |",
        "|---:|" + "---|" * len(models),
    ]
    for epoch in range(n):
        cells = []
        for m in models:
            entries = [h[epoch]["val"] for h in histories[m] if len(h) > epoch]
            cells.append(
                f"{np.mean([e['auc/like'] for e in entries]):.4f} / {np.mean([e['mse/rating'] for e in entries]):.4f}"
                if entries
                else ""
            )
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    json_path, md_path = args.output.with_suffix(".json"), args.output.with_suffix(".md")
    state = json.loads(json_path.read_text()) if json_path.exists() else {"runs": {}}
    if not args.report_only:
        state["settings"] = {
            k: v for k, v in vars(args).items() if k in ("batch_size", "max_epochs", "lr", "device")
        }
        for dataset in args.datasets:
            try:
                splits: Splits = load_movielens(args.data_root / DATASETS[dataset], seed=0)
            except DataError as exc:
                raise SystemExit(f"bench_movielens_dml: error: --data-root: {exc}") from None
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for backbone in args.backbones:
                    for variant in args.variants:
                        name = model_key(backbone, variant)
                        key = f"{dataset}|{name}|{seed}"
                        if key in state["runs"]:
                            continue
                        suffix, options = VARIANTS[variant]
                        state["runs"][key] = run_one(splits, backbone + suffix, options, seed, args)
                        last = state["runs"][key]["history"][-1]
                        print(
                            key, json.dumps(last["test"]), f"{state['runs'][key]['seconds']:.0f}s", flush=True
                        )
                        json_path.parent.mkdir(parents=True, exist_ok=True)
                        json_path.write_text(json.dumps(state))
    merged = {"settings": state.get("settings", {}), "runs": dict(state["runs"])}
    for other in args.also:
        part = json.loads(other.read_text())
        merged["settings"] = merged["settings"] or part.get("settings", {})
        merged["runs"] |= part["runs"]
    md_path.write_text(markdown(merged, args))
    print(md_path.read_text())


if __name__ == "__main__":
    main()
