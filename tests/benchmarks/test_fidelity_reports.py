"""The verdict rules of the model-fidelity reports (issue #16) and the DML / SSMTL target sections."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import bench_movielens_dml, bench_ssmtl
from benchmarks.fidelity import NOT_MEASURED, NOT_REPRODUCED, REPRODUCED, Paired, combine, paired, verdict

NOISE = [0.0, 0.001, -0.001, 0.0005, -0.0005]  # per-seed noise: sd 0.00079, se over 5 seeds 0.00035


def test_paired_mean_and_standard_error() -> None:
    result = paired([1.0, 2.0, 3.0])
    assert result.mean == 2.0 and result.n == 3
    assert result.se == pytest.approx(1.0 / math.sqrt(3))
    assert math.isnan(paired([0.5]).se) and paired([]).n == 0
    assert paired([1.0, -2.0]).per_seed() == "+1.0000, -2.0000"


def test_too_few_seeds_is_not_measured_even_for_a_large_effect() -> None:
    assert verdict(paired([-0.5, -0.6]), "lower").status == NOT_MEASURED


def test_effect_must_beat_two_standard_errors_on_the_right_side() -> None:
    assert verdict(Paired(-0.010, 0.004, 5), "lower").status == REPRODUCED
    assert verdict(Paired(-0.010, 0.006, 5), "lower").status == NOT_REPRODUCED
    assert verdict(Paired(+0.010, 0.001, 5), "lower").status == NOT_REPRODUCED
    assert verdict(Paired(+0.010, 0.001, 5), "higher").status == REPRODUCED


def test_guard_metric_significantly_worse_fails_the_target() -> None:
    effect = Paired(-0.010, 0.001, 5)
    assert verdict(effect, "lower", Paired(-0.001, 0.002, 5), "higher").status == REPRODUCED
    failed = verdict(effect, "lower", Paired(-0.005, 0.001, 5), "higher")
    assert failed.status == NOT_REPRODUCED and "guard" in failed.reason


def test_verdict_reports_the_one_sided_t_test_p_value() -> None:
    assert "one-sided p = 0.033 (Student t, 4 df)" in verdict(Paired(-0.010, 0.004, 5), "lower").reason


def test_fewer_than_required_seeds_is_marked_provisional() -> None:
    assert "provisional: 3 of 5" in verdict(Paired(-0.01, 0.001, 3), "lower").reason
    assert "provisional" not in verdict(Paired(-0.01, 0.001, 5), "lower").reason


def test_combined_target_needs_every_part() -> None:
    yes, no, unknown = (verdict(Paired(m, 0.001, n), "lower") for m, n in ((-0.01, 5), (0.01, 5), (-0.01, 1)))
    assert combine([yes, yes]) == REPRODUCED
    assert combine([yes, unknown]) == NOT_MEASURED
    assert combine([no, unknown]) == NOT_REPRODUCED


def _dml_history(mse: float, auc: float, noise: float, epochs: int = 4) -> list[dict]:
    """Validation peaks at the last epoch; test metrics equal validation."""
    entries = []
    for epoch in range(epochs):
        metrics = {"auc/like": auc + 0.01 * epoch, "mse/rating": mse + noise - 0.01 * epoch}
        entries.append({"epoch": epoch, "val": metrics, "test": metrics, "shift": 0.0})
    return entries


def _dml_runs(backbones: tuple[str, ...], gain: float, seeds: int) -> dict[str, dict]:
    runs = {}
    for backbone in backbones:
        for seed in range(seeds):
            for variant, delta in (("base", 0.0), ("dml", -gain)):
                key = f"ml-1m-partial|{bench_movielens_dml.model_key(backbone, variant)}|{seed}"
                runs[key] = {"seed": seed, "history": _dml_history(0.80 + delta, 0.80, NOISE[seed])}
    return runs


def test_dml_target_reproduced_only_with_both_backbones() -> None:
    both = "\n".join(bench_movielens_dml.targets(_dml_runs(("mmoe", "ple"), gain=0.01, seeds=5)))
    assert "* **dml**: reproduced" in both
    only_mmoe = "\n".join(bench_movielens_dml.targets(_dml_runs(("mmoe",), gain=0.01, seeds=5)))
    assert "* **dml**: not measured" in only_mmoe
    worse = "\n".join(bench_movielens_dml.targets(_dml_runs(("mmoe", "ple"), gain=-0.01, seeds=5)))
    assert "* **dml**: not reproduced" in worse
    assert "* **dml-reg**: not measured" in worse  # no dml-reg runs at all


def test_gkd_selection_runs_map_to_the_variants_with_the_same_options(tmp_path: Path) -> None:
    history = _dml_history(0.8, 0.8, 0.0)
    path = tmp_path / "options.json"
    path.write_text(json.dumps({f"{name}|0": history for name in ("mmoe", "dml", "dml-gkd0", "gkd-zero")}))
    runs = bench_movielens_dml.gkd_option_runs(path)
    assert sorted(runs) == ["ml-100k|mmoe+dml[dml-reg]|0", "ml-100k|mmoe+dml|0", "ml-100k|mmoe|0"]


def _ssmtl_run(variant: str, seed: int, low_recall: float, split: str = "cold-start") -> dict:
    slices = ("overall", "low (deg<=10)", "cold (deg<=2)") + (("cold-start users",) if split == "cold-start" else ())
    return {
        "variant": variant,
        "seed": seed,
        "test": {s: {"recall@50": low_recall if s == "low (deg<=10)" else 0.5, "users": 100} for s in slices},
        "history": [
            {"step": step, "val_recall@50": 0.5 + step / 1e4, "val_recall@50/low (deg<=10)": 0.4}
            for step in (100, 200)
        ],
    }


@pytest.mark.parametrize(("seeds", "gain", "expected"), [(5, 0.02, REPRODUCED), (5, 0.0, NOT_REPRODUCED),
                                                         (2, 0.02, NOT_MEASURED)])  # fmt: skip
def test_ssmtl_target_is_the_low_degree_recall(seeds: int, gain: float, expected: str) -> None:
    runs = [_ssmtl_run("retrieval-only", s, 0.5 + NOISE[s]) for s in range(seeds)]
    runs += [_ssmtl_run("ssmtl", s, 0.5 + gain - NOISE[s]) for s in range(seeds)]
    text = "\n".join(bench_ssmtl.target_lines(runs, ["retrieval-only", "ssmtl"]))
    assert f"**SSMTL target: {expected}.**" in text
    assert "| ssmtl | 0 | 200 (last: still rising) |" in text


def test_ssmtl_ablations_are_paired_against_retrieval_only_and_full_ssmtl() -> None:
    runs = [_ssmtl_run("retrieval-only", s, 0.5 + NOISE[s]) for s in range(5)]
    runs += [_ssmtl_run("ssmtl", s, 0.53 + NOISE[s]) for s in range(5)]
    runs += [_ssmtl_run("retrieval+cca", s, 0.52 + NOISE[s]) for s in range(5)]
    text = "\n".join(bench_ssmtl.ablation_lines(runs, ["retrieval-only", "ssmtl", "retrieval+cca"]))
    low = next(line for line in text.splitlines() if line.startswith("| retrieval+cca | low (deg<=10) |"))
    assert "| **+0.0200 ± 0.0000 (n=5)** |" in low and "| **-0.0100 ± 0.0000 (n=5)** |" in low
    assert "| retrieval+cca | overall | 0.5000 ± 0.0000 | +0.0000 ± 0.0000 (n=5) |" in text
    assert not bench_ssmtl.ablation_lines(runs[:10], ["retrieval-only", "ssmtl"])


def test_ssmtl_report_of_a_random_split_leaves_the_cold_start_slice_out() -> None:
    """A random split has no cold-start users: the target and ablation tables ended in KeyError."""
    variants = ["retrieval-only", "retrieval+cca"]
    runs = [_ssmtl_run(v, s, 0.5 + NOISE[s], split="random") for v in variants for s in range(3)]
    text = "\n".join(bench_ssmtl.target_lines(runs, variants) + bench_ssmtl.ablation_lines(runs, variants))
    assert "| retrieval+cca | overall |" in text and "cold-start users" not in text
