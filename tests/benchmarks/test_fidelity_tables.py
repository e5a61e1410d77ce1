"""The statistics of the issue-16 fidelity tables (benchmarks/bench_census_csrec.py, shared by
bench_grec_routing.py): paired deltas over the seeds both models ran, their standard error, and labels that say
how many seeds a delta rests on when models ran different numbers of seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_census_csrec import (
    RunResult,
    format_delta,
    markdown,
    paired_deltas,
    save_report,
    seeds_line,
)


def run(model: str, seed: int, auc: float) -> RunResult:
    return RunResult(model, seed, best_epoch=0, epochs_run=1, seconds=0.0, val={}, test={"auc": auc})


def test_paired_deltas_use_only_the_seeds_both_models_ran() -> None:
    results = [run("base", 0, 0.90), run("base", 1, 0.92), run("new", 0, 0.91), run("new", 1, 0.95)]
    results.append(run("new", 2, 0.99))  # no baseline seed 2: left out of the pairs
    mean, sem, n = paired_deltas(results, "base")["new"]["auc"]
    # differences 0.01 and 0.03: mean 0.02, sample std 0.01414, sem 0.01
    assert n == 2
    assert mean == pytest.approx(0.02)
    assert sem == pytest.approx(0.01)


def test_format_delta_marks_one_and_two_standard_errors_and_gives_the_seed_count() -> None:
    assert format_delta((0.0096, 0.0026, 2)) == "+0.0096 ± 0.0026 >2se (n=2)"
    assert format_delta((-0.0015, 0.0010, 4)) == "-0.0015 ± 0.0010 >1se (n=4)"
    assert format_delta((0.0005, 0.0010, 5)) == "+0.0005 ± 0.0010 (n=5)"
    assert format_delta((0.01, float("nan"), 1)) == "+0.0100 ± nan (n=1)"
    assert format_delta(None) == "-"


def test_seeds_line_names_each_models_seed_count_when_they_differ() -> None:
    same = [run(m, s, 0.5) for m in ("a", "b") for s in range(3)]
    assert seeds_line(same) == "3 paired seeds"
    uneven = [*same, run("b", 3, 0.5)]
    assert seeds_line(uneven) == "seeds a 3, b 4 (deltas pair common seeds)"


def test_save_report_writes_runs_in_model_order_then_seed_with_the_summary(tmp_path: Path) -> None:
    results = [run("b", 1, 0.7), run("a", 1, 0.6), run("b", 0, 0.5), run("c", 0, 0.4)]
    save_report(
        tmp_path, "r", {"protocol": {"lr": 0.1}}, results, ["b", "a"], lambda runs: f"{len(runs)} runs\n"
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report) == ["protocol", "summary", "runs"]
    assert [(r["model"], r["seed"]) for r in report["runs"]] == [("b", 0), ("b", 1), ("a", 1), ("c", 0)]
    assert report["summary"]["b"]["auc"]["mean"] == pytest.approx(0.6)
    assert (tmp_path / "r.md").read_text() == "4 runs\n"


def test_a_run_that_selected_no_epoch_is_counted_apart_in_the_table() -> None:
    # a masked model whose masks were still changing at its last epoch: best_epoch -1, no validation AUC
    aucs = {"auc/income": 0.9, "auc/never_married": 0.98}
    history = [{"epoch": 0, **aucs}]
    selected = RunResult("csrec", 0, 3, epochs_run=9, seconds=1.0, val=aucs, test=aucs, history=history)
    unselected = RunResult("csrec", 1, -1, epochs_run=2, seconds=1.0, val={}, test=aucs, history=history)
    protocol = {"lr": 1e-3, "batch_size": 1024, "patience": 5, "max_epochs": 2}
    rows = [line for line in markdown([selected, unselected], (8, 1, 1), protocol).splitlines()
            if line.startswith("| csrec | 2 |")]  # fmt: skip
    assert len(rows) == 1
    assert "| 0.9400 | 3.0 (3-3); 1 run(s) selected no epoch (masks not fixed) |" in rows[0]
    only = markdown([unselected], (8, 1, 1), protocol)
    assert "| - | 1 run(s) selected no epoch (masks not fixed) |" in only
