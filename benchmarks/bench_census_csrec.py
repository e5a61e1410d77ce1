"""CSRec paper Table 4 on census-income: MMoE, PLE, sparse sharing and CSRec (plus its ablations), AUC of income
and marital status, trained to convergence on validation.

Data: only the official census-income *test* file (99,762 rows) is available locally, so it is split 8:1:1 at
random (``models.data.census``, split seed fixed across models and seeds); the paper trains on the 199,523-row
training file and tests on the test file, so absolute numbers are not comparable, only the ordering and the
paired deltas (paper: CSRec > sparse sharing > PLE > MMoE on both tasks). Features: the 39 columns the file has
besides the two labels and ``instance weight`` (32 categorical, 7 continuous; the paper counts 40).

Protocol (identical for every model; the paper gives no optimiser, batch size or stopping rule): Adam lr 1e-3,
batch 1024, early stopping on the mean validation AUC (patience 5, at most 100 epochs, best checkpoint
restored), paired seeds, linear task towers (section 3.1.3). Sparse sharing and CSRec mask the paper's MLP
(256, 192, 128) and prune by Algorithm 1 (alpha 0.1, epsilon 0.4; rounds of 5 epochs, every parameter and the
optimizer rewound after a round that leaves a subnet <= epsilon sparse); early stopping and checkpoint choice
wait until every mask is fixed. MMoE has 3 experts and PLE 2 levels of 3 experts (1 per task + 1 shared),
experts of (128, 64), so that parameter counts are in the ratio of the paper's Table 4 (MMoE 161k, PLE 213k,
sparse sharing 113k, CSRec 111k). ``csrec-at`` (alternating training, plain task loss) and ``csrec-cl``
(parallel training, Eq. 6 loss) are the ablations of section 3.3.1; ``csrec-flip-both`` is random reverse with
the literal "1 to 0, otherwise 0 to 1" of section 2.2.2.

Every run keeps its per-epoch history (validation AUC; for the masked models the mean training losses of the
epoch, the contrastive-subnet loss, conflict ratio, densities, sharing ratio, |w| of live and pruned weights),
from which the results file draws its learning curves and mask statistics.

Usage (CPU is shared, so this runs single-threaded and niced; see benchmarks/run_fidelity.sh):
    nice -n 19 .venv/bin/python -m benchmarks.bench_census_csrec --data ../shared/data/census-income-kdd
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import models  # noqa: F401  (registers every family)
from models.base import MultiTaskModel
from models.data import Splits, load_dataset
from models.errors import DataError
from models.registry import create_model
from models.schedules import after_epoch, after_step, make_optimizer, selection_ready, training_loss
from models.train import evaluate_model, set_seed

logger = logging.getLogger(__name__)

MLP = (256, 192, 128)
EXPERT = (128, 64)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {  # label -> (registry name, options)
    "mmoe": ("mmoe", {"n_experts": 3, "expert_dims": EXPERT, "tower_dims": (), "dropout": 0.0}),
    "ple": ("ple", {"n_levels": 2, "expert_dims": EXPERT, "tower_dims": (), "dropout": 0.0}),
    "sparse-sharing": ("sparse-sharing", {"hidden_dims": MLP}),
    "csrec": ("csrec", {"hidden_dims": MLP}),
    "csrec-at": ("csrec", {"hidden_dims": MLP, "use_contrastive": False}),
    "csrec-cl": ("csrec", {"hidden_dims": MLP, "alternating": False}),
    "csrec-flip-both": ("csrec", {"hidden_dims": MLP, "reverse_pruned": True}),
}
MAIN = ("mmoe", "ple", "sparse-sharing", "csrec")
PAPER_TABLE_4 = {  # AUC income (T1), marital (T2) on the full census-income data
    "mmoe": (0.9477, 0.9905),
    "ple": (0.9492, 0.9917),
    "sparse-sharing": (0.9502, 0.9921),
    "csrec": (0.9531, 0.9933),
}
TASK_KEYS = ("auc/income", "auc/never_married")


@dataclass
class RunResult:
    model: str
    seed: int
    best_epoch: int
    epochs_run: int
    seconds: float
    val: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def train_with_hooks(
    name: str,
    options: dict[str, Any],
    splits: Splits,
    seed: int,
    batch_size: int = 1024,
    lr: float = 1e-3,
    max_epochs: int = 100,
    patience: int = 5,
    device: str = "cpu",
    test_metrics: Callable[[MultiTaskModel], dict[str, float]] | None = None,
) -> RunResult:
    """One seed of one model: the zoo's training loop with the ``models.schedules`` hooks; early stopping on the
    mean validation AUC once ``selection_ready``; the history has one row per epoch. ``test_metrics`` adds
    metrics of the restored best model to the test AUCs."""
    set_seed(seed)
    dev = torch.device(device)
    model: MultiTaskModel = create_model(  # type: ignore[assignment]
        name, features=splits.train.features, tasks=splits.train.tasks, **options
    ).to(dev)
    optimizer = make_optimizer(model, lr)
    rng = np.random.default_rng(seed)
    best_score, best_state, best_epoch, best_val = -math.inf, None, -1, {}
    history: list[dict[str, float]] = []
    started, step, epoch = time.perf_counter(), 0, 0
    for epoch in range(max_epochs):
        model.train()
        steps = math.ceil(len(splits.train) / batch_size)
        for batch, labels in tqdm(
            splits.train.batches(batch_size, shuffle=True, generator=rng),
            total=steps,
            desc=f"{name} seed {seed} epoch {epoch}",
            leave=False,
            disable=None,  # no bar in log files
        ):
            batch = {k: v.to(dev) for k, v in batch.items()}
            loss = training_loss(model, batch, labels.to(dev), step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            after_step(model, step)
            step += 1
        stats = after_epoch(model, epoch)
        val = evaluate_model(model, splits.val, dev)
        aucs = [v for k, v in val.items() if k.startswith("auc/")]
        score = float(np.mean(aucs))
        history.append({"epoch": epoch, "step": step, **val, **stats})
        logger.info("%s seed %d epoch %d: %s", name, seed, epoch, history[-1])
        if not selection_ready(model):
            continue
        if score > best_score:
            best_score, best_epoch, best_val = score, epoch, val
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    test = evaluate_model(model, splits.test, dev)
    if test_metrics is not None:
        test.update(test_metrics(model))
    return RunResult(
        name, seed, best_epoch, epoch + 1, time.perf_counter() - started, best_val, test, history
    )


def summarize(results: Sequence[RunResult]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and test metric: mean, sample std, standard error over seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in dict.fromkeys(r.model for r in results):
        runs = [r for r in results if r.model == name]
        out[name] = {}
        for key in runs[0].test:
            values = np.array([r.test[key] for r in runs])
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out[name][key] = {"mean": float(values.mean()), "std": std, "sem": std / math.sqrt(len(values))}
    return out


def paired_deltas(
    results: Sequence[RunResult], baseline: str
) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per model and test metric: mean and standard error of (model - baseline) over the seeds both ran."""
    base = {r.seed: r.test for r in results if r.model == baseline}
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for name in dict.fromkeys(r.model for r in results if r.model != baseline):
        runs = [r for r in results if r.model == name and r.seed in base]
        if not runs:
            continue
        out[name] = {}
        for key in runs[0].test:
            if any(key not in base[r.seed] for r in runs):
                continue
            diff = np.array([r.test[key] - base[r.seed][key] for r in runs])
            sem = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
            out[name][key] = (float(diff.mean()), sem, len(diff))
    return out


def format_delta(d: tuple[float, float, int] | None) -> str:
    """``mean ± sem`` of a paired delta, marked >1se / >2se, with the number of paired seeds."""
    if d is None:
        return "-"
    mean, sem, n = d
    mark = " >2se" if sem > 0 and abs(mean) > 2 * sem else (" >1se" if sem > 0 and abs(mean) > sem else "")
    return f"{mean:+.4f} ± {sem:.4f}{mark} (n={n})"


def seeds_line(results: Sequence[RunResult]) -> str:
    """The seeds behind a table: one count when every model ran the same ones, else each model's."""
    by_model = {
        name: sorted(r.seed for r in results if r.model == name)
        for name in dict.fromkeys(r.model for r in results)
    }
    if len({tuple(s) for s in by_model.values()}) == 1:
        return f"{len(next(iter(by_model.values())))} paired seeds"
    return (
        "seeds "
        + ", ".join(f"{name} {len(s)}" for name, s in by_model.items())
        + " (deltas pair common seeds)"
    )


def _mean_history(runs: Sequence[RunResult], key: str, epoch: int) -> float | None:
    values = [r.history[epoch][key] for r in runs if epoch < len(r.history) and key in r.history[epoch]]
    return float(np.mean(values)) if values else None


def selection_cells(runs: Sequence[RunResult]) -> tuple[str, str]:
    """A model's "val mean AUC" and "best epoch (mean, range)" cells over the runs that selected an epoch;
    a run whose masks were still changing at its last epoch selected none (``best_epoch`` -1, no validation
    AUC; its test AUC is the last epoch's model) and is counted apart."""
    selected = [r for r in runs if r.best_epoch >= 0]
    unselected = f"{len(runs) - len(selected)} run(s) selected no epoch (masks not fixed)"
    if not selected:
        return "-", unselected
    val = np.mean([np.mean([r.val[k] for k in TASK_KEYS]) for r in selected])
    best = [r.best_epoch for r in selected]
    cell = f"{np.mean(best):.1f} ({min(best)}-{max(best)})"
    return f"{val:.4f}", cell if len(selected) == len(runs) else f"{cell}; {unselected}"


def markdown(results: Sequence[RunResult], n_rows: Sequence[int], protocol: dict[str, Any]) -> str:
    """Results table with paired deltas, learning curves and mask / loss statistics."""
    summary = summarize(results)
    names = list(summary)
    lines = [
        f"Census-income, test file only, split 8:1:1 (train {n_rows[0]}, val {n_rows[1]}, test {n_rows[2]} rows),"
        f" {seeds_line(results)}, test AUC mean ± std (sem). Adam {protocol['lr']}, batch"
        f" {protocol['batch_size']}, early stopping on mean validation AUC (patience {protocol['patience']},"
        f" at most {protocol['max_epochs']} epochs). Paper Table 4 (full training file) for reference.",
        "",
        "| model | seeds | AUC income | AUC never_married | val mean AUC | best epoch (mean, range) | epochs run "
        "| paper income | paper marital |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        runs = [r for r in results if r.model == name]
        inc, mar = summary[name]["auc/income"], summary[name]["auc/never_married"]
        paper = PAPER_TABLE_4.get(name)
        val, best = selection_cells(runs)
        lines.append(
            f"| {name} | {len(runs)} | {inc['mean']:.4f} ± {inc['std']:.4f} ({inc['sem']:.4f}) "
            f"| {mar['mean']:.4f} ± {mar['std']:.4f} ({mar['sem']:.4f}) "
            f"| {val} | {best} | {np.mean([r.epochs_run for r in runs]):.1f} "
            f"| {paper[0] if paper else '-'} | {paper[1] if paper else '-'} |"
        )
    lines += ["", "Paired test-AUC deltas (mean ± sem over the seeds both ran, n; >1se / >2se marked):", ""]
    lines += ["| model − baseline | Δ income | Δ never_married | paper Δ income | paper Δ marital |"]
    lines += ["|---|---:|---:|---:|---:|"]
    for baseline in ("mmoe", "sparse-sharing", "csrec"):
        deltas = paired_deltas(results, baseline)
        for name in names:
            if name == baseline or name not in deltas:
                continue
            if baseline == "csrec" and not name.startswith("csrec"):
                continue
            d = deltas[name]
            p, q = PAPER_TABLE_4.get(name), PAPER_TABLE_4.get(baseline)
            paper = (f"{p[0] - q[0]:+.4f}", f"{p[1] - q[1]:+.4f}") if p and q else ("-", "-")
            lines.append(
                f"| {name} − {baseline} | {format_delta(d.get('auc/income'))} "
                f"| {format_delta(d.get('auc/never_married'))} | {paper[0]} | {paper[1]} |"
            )
    lines += learning_curves(results, names) + mask_tables(results, names)
    return "\n".join(lines) + "\n"


def learning_curves(results: Sequence[RunResult], names: Sequence[str]) -> list[str]:
    """Validation income AUC by epoch, mean over seeds (epochs a seed did not run are left out)."""
    longest = max(len(r.history) for r in results)
    epochs = sorted({*range(0, longest, 5), longest - 1})
    lines = [
        "",
        "Learning curves: validation AUC income by epoch (mean over the seeds still running):",
        "",
        "| epoch | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for epoch in epochs:
        cells = []
        for name in names:
            value = _mean_history([r for r in results if r.model == name], "auc/income", epoch)
            cells.append("" if value is None else f"{value:.4f}")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return lines


def mask_tables(results: Sequence[RunResult], names: Sequence[str]) -> list[str]:
    """Per masked model: mask and loss statistics at the end of each pruning round and at the last epoch."""
    lines: list[str] = []
    keys = [
        ("density/income", "density inc"),
        ("density/never_married", "density mar"),
        ("sharing_ratio", "SR"),
        ("sharing_ratio_if_independent", "SR indep."),
        ("conflict_ratio", "CR"),
        ("pruned_since_init/income", "pruned since init (inc)"),
        ("abs_weight/live", "|w| live"),
        ("abs_weight/pruned", "|w| pruned"),
        ("loss/income", "L inc"),
        ("contrastive_subnet_loss/income", "L− inc"),
        ("contrastive_loss/income", "Loss_c inc"),
    ]
    for name in names:
        runs = [r for r in results if r.model == name and r.history and "sharing_ratio" in r.history[0]]
        if not runs:
            continue
        longest = max(len(r.history) for r in runs)
        present = [(k, label) for k, label in keys if any(k in h for r in runs for h in r.history)]
        lines += [
            "",
            f"{name}: mask and loss statistics by epoch (mean over seeds; masks are measured after the "
            "epoch's prune, losses are the epoch's training means):",
            "",
            "| epoch | " + " | ".join(label for _, label in present) + " |",
            "|---:|" + "---:|" * len(present),
        ]
        for epoch in sorted({*range(0, longest, 5), *range(4, longest, 5), longest - 1}):
            cells = []
            for key, _ in present:
                value = _mean_history(runs, key, epoch)
                cells.append("" if value is None else f"{value:.4f}")
            lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/data/census-income-kdd", help="census-income directory")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4], help="none: only merge --resume"
    )
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="census_csrec", help="results file stem (<name>.json / <name>.md)")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=JSON",
        help="model option set on every selected model (e.g. reverse_ratio=0.3); labels get --suffix",
    )
    parser.add_argument("--suffix", default="", help="appended to the labels of runs with --override")
    parser.add_argument(
        "--resume",
        type=Path,
        nargs="*",
        default=[],
        help="results .json files whose runs are kept, not rerun (also merges runs of parallel processes)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("models").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        splits = load_dataset("census", args.data, args.split_seed)
    except DataError as exc:
        parser.error(f"--data: {exc}")
    n_rows = (len(splits.train), len(splits.val), len(splits.test))
    args.output.mkdir(parents=True, exist_ok=True)
    resumed = [json.loads(path.read_text()) for path in args.resume]
    results = [RunResult(**run) for report in resumed for run in report["runs"]]
    done = {(r.model, r.seed) for r in results}
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.override)}
    table = {
        f"{label}{args.suffix}": (MODELS[label][0], {**MODELS[label][1], **overrides})
        for label in args.models
    }
    protocol = {
        "data": "census-income test file only, random 8:1:1 split",
        "split_seed": args.split_seed,
        "rows": n_rows,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "models": {**{k: v for report in resumed for k, v in report["protocol"]["models"].items()}, **table},
    }
    for seed in args.seeds:  # seeds outermost: a cut-short run still covers every model
        for label, (name, options) in table.items():
            if (label, seed) in done:
                continue
            result = train_with_hooks(
                name,
                options,
                splits,
                seed,
                args.batch_size,
                lr=args.lr,
                max_epochs=args.max_epochs,
                patience=args.patience,
                device=args.device,
            )
            result.model = label
            results.append(result)
            print(
                f"{label} seed {seed}: {result.test} (best epoch {result.best_epoch}, {result.seconds:.0f}s)",
                flush=True,
            )
            write_report(args.output, args.name, protocol, results, n_rows)
    write_report(args.output, args.name, protocol, results, n_rows)
    print(markdown(results, n_rows, protocol))


def save_report(
    output: Path,
    name: str,
    head: dict[str, Any],
    results: Sequence[RunResult],
    order: Sequence[str],
    render: Callable[[list[RunResult]], str],
) -> None:
    """``<name>.json`` (``head``, the summary and every run with its per-epoch history, runs sorted by ``order``
    then seed) and ``<name>.md`` (``render`` of the sorted runs); shared by the issue-16 benchmarks."""
    rank = {label: i for i, label in enumerate(order)}
    ordered = sorted(results, key=lambda r: (rank.get(r.model, len(rank)), r.seed))
    report = {**head, "summary": summarize(ordered), "runs": [r.__dict__ for r in ordered]}
    (output / f"{name}.json").write_text(json.dumps(report, indent=2))
    (output / f"{name}.md").write_text(render(ordered))


def write_report(
    output: Path, name: str, protocol: dict[str, Any], results: Sequence[RunResult], n_rows: Sequence[int]
) -> None:
    head = {"protocol": protocol, "paper_table_4": PAPER_TABLE_4}
    save_report(output, name, head, results, list(MODELS), lambda runs: markdown(runs, n_rows, protocol))


if __name__ == "__main__":
    main()
