"""Time to analyse one experiment: the warehouse path (compiled SQL on the DuckDB store's rollups) against the
warehouse path before rollups and the old SQLite path, side by side on the same data; plus the statistics engine
alone.

Targets (issue 12, 2 cores): a report for 1M users in < 1.5 s and < 3 s with the timeline; 10M users in < 15 s
and < 40 s with the timeline, under 6 GB of memory. (Issue 7: 1M users from sufficient statistics in < 1 s.)

Paths, on the same simulated experiment (the 4 metrics of analytics/examples/metrics.yaml: binomial, ratio,
winsorised CUPED continuous, count; two variants; per user 1 exposure, a pre-exposure and a post-exposure watch
event, Poisson(3) impressions and a click with probability 0.3; user ids in random order):

1. statistics: per-variant sufficient statistics merged from 30 daily partitions, tested, corrected, SRM-checked.
2. warehouse: ``build_report`` on a ``DuckDBEventStore`` (the compiled SQL: one query for every metric and every
   timeline cut point) after the store's compaction, which writes the rollups the query reads, without and with
   the timeline; then again after ``--tail-fraction`` more users' events arrived in parts not compacted yet (the
   query reads those raw, as a store does between compactions).
3. warehouse before rollups: the same, with this package as of commit ``PRE_ROLLUP_COMMIT`` (a copy of that tree
   from git history runs the timing; it reads the same store, ignoring the rollups).
4. sqlite: ``build_report`` on the SQLite store this project had before (its code is loaded from git history,
   commit ``SQLITE_COMMIT``, so the old path stays measurable without living in the package): per-user rows walked
   in Python, once per metric and cut point.

Each report is timed in a fresh process (best of ``--repeats``), which also gives its peak memory (VmHWM) and its
CPU time (user + system, all threads): on a shared machine the CPU time is the figure other jobs' load does not
inflate.

Usage (timing runs hold the shared benchmark lock):
    flock /tmp/mtrank-bench.lock .venv/bin/python -m benchmarks.bench_analysis --sizes 200000 1000000 \\
        --sqlite-sizes 200000 1000000 --out benchmarks/results/analysis.md
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import operator
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from analytics.analysis_window import ALL_TIME, AnalysisWindow
from analytics.interleaving import ArmsSeen
from analytics.metrics import AnalysisConfig, load_analysis_config
from analytics.report import analyse_metrics, build_report
from analytics.stats.models.statistics import PreferenceCounts, Proportion, Ratio, SampleMean, TestStatistic
from analytics.stats.srm import srm_p_value
from analytics.store import DuckDBEventStore, EventStore, ExposureColumns, OutcomeColumns

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "analytics" / "examples" / "metrics.yaml"
VARIANTS = ("control", "dml")
DAYS = 30
START_MS = 1_790_000_000_000
SQLITE_COMMIT = "3dc3146"  # the last commit whose analytics/store/sqlite.py was the product's store
PRE_ROLLUP_COMMIT = "38201f9"  # the warehouse path before rollups (issue 12 as merged)
TAIL_PARTS = 4
CHUNK_USERS = 500_000


def as_ab_only_store(store_class: type[EventStore]) -> type[EventStore]:
    """``store_class``, a store written before ``EventStore`` knew interleaving experiments and analysis
    windows, as today's ``EventStore``: it keeps no interleaved exposures, so every experiment in it is an A/B
    test, and it answers queries over all time only (a bounded window is refused, not ignored)."""

    def all_time(query: str) -> Callable[..., Any]:
        def answer(self: EventStore, *args: Any, window: AnalysisWindow = ALL_TIME, **kwargs: Any) -> Any:
            if window.bounded:
                raise NotImplementedError(f"{store_class.__name__} predates analysis windows")
            return getattr(store_class, query)(self, *args, **kwargs)

        return answer

    class ABOnlyStore(store_class):  # type: ignore[misc, valid-type]
        variant_counts = all_time("variant_counts")
        user_metric_values = all_time("user_metric_values")
        metric_statistics = all_time("metric_statistics")
        exposure_timeline = all_time("exposure_timeline")
        time_range = all_time("time_range")

        def _stored_experiments(self) -> list[str]:
            return store_class.experiments(self)  # its own listing (from before the base class checked key sizes)

        def interleaving_arms(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> list[ArmsSeen]:
            return []  # no interleaved exposures in any window

        def preference_counts(
            self, experiment_key: str, cuts: Sequence[int | None], click_metric: str = "click"
        ) -> list[PreferenceCounts]:
            raise NotImplementedError(f"{store_class.__name__} keeps no interleaved exposures")

    ABOnlyStore.__name__ = ABOnlyStore.__qualname__ = store_class.__name__
    return ABOnlyStore


def old_sqlite_store_class() -> Callable[[Path], EventStore]:
    """``SQLiteEventStore`` as of ``SQLITE_COMMIT``, loaded from git history (an A/B-only store)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{SQLITE_COMMIT}:analytics/store/sqlite.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.gettempdir()) / f"mtrank_old_sqlite_store_{SQLITE_COMMIT}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("mtrank_old_sqlite_store", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return as_ab_only_store(module.SQLiteEventStore)


def simulate_chunk(lo: int, hi: int, seed: int = 1) -> tuple[ExposureColumns, OutcomeColumns]:
    """Users ``lo:hi`` of the benchmark experiment as column batches (numpy arrays, no per-row objects)."""
    rng = np.random.default_rng([seed, lo])
    n = hi - lo
    index = np.arange(lo, hi)
    # user ids in random order (a keyed hash of the index), as users arrive in no particular order
    user = np.char.add("u", (index * 2_654_435_761 % 4_294_967_291).astype(str))
    t = START_MS + index * 50
    variant = np.where(rng.random(n) < 0.5, VARIANTS[1], VARIANTS[0])
    impressions = rng.poisson(3.0, n)
    clicked = (impressions > 0) & (rng.random(n) < 0.3)
    rep = np.repeat(np.arange(n), impressions)
    k = np.arange(rep.size) - np.repeat(np.cumsum(impressions) - impressions, impressions)
    ids = index.astype(str)
    parts = [
        (np.char.add("p", ids), user, "watch", t - 1000, rng.exponential(10.0, n)),
        (np.char.add("w", ids), user, "watch", t + 10, rng.exponential(10.0, n)),
        (np.char.add(np.char.add(np.char.add("i", ids[rep]), "-"), k.astype(str)), user[rep], "impression",
         t[rep] + 20 + k, np.ones(rep.size)),
        (np.char.add("c", ids[clicked]), user[clicked], "click", t[clicked] + 30, np.ones(int(clicked.sum()))),
    ]  # fmt: skip
    exposures = ExposureColumns(np.char.add("x", ids), np.full(n, "bench"), variant, user, t)
    outcomes = OutcomeColumns(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([np.full(len(p[0]), p[2]) for p in parts]),
        np.concatenate([p[3] for p in parts]),
        np.concatenate([p[4] for p in parts]),
    )
    return exposures, outcomes


def build_stores(users: int, folder: Path, sqlite: bool, memory_limit: str | None) -> dict[str, Any]:
    """The DuckDB store (compacted: rollups written) and optionally the old SQLite store, with the same events."""
    duck = DuckDBEventStore(folder / "events", compact_parts=0, memory_limit=memory_limit)
    old = old_sqlite_store_class()(folder / "events.db") if sqlite else None
    info: dict[str, Any] = {"events": 0, "duckdb_apply_s": 0.0, "sqlite_apply_s": 0.0}
    for lo in tqdm(range(0, users, CHUNK_USERS), desc=f"writing {users:,} users", unit="chunk"):
        exposures, outcomes = simulate_chunk(lo, min(lo + CHUNK_USERS, users))
        info["events"] += len(exposures) + len(outcomes)
        start = time.perf_counter()
        duck.apply(exposures, outcomes, {})
        info["duckdb_apply_s"] += time.perf_counter() - start
        if old is not None:
            rows_e = list(zip(*(c.tolist() for c in exposures.columns().values()), strict=True))
            rows_o = list(zip(*(c.tolist() for c in outcomes.columns().values()), strict=True))
            start = time.perf_counter()
            for i in range(0, len(rows_o), 200_000):  # the consumer's commit size
                old.apply(rows_e if i == 0 else [], rows_o[i : i + 200_000], {})
            info["sqlite_apply_s"] += time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    duck.compact(everything=True)
    info["duckdb_compact_s"] = time.perf_counter() - start
    info["duckdb_compact_cpu_s"] = time.process_time() - cpu
    info["duckdb_bytes"] = sum(f.stat().st_size for f in (folder / "events").rglob("*.parquet"))
    info["rollup_bytes"] = sum(
        f.stat().st_size for name in ("first_exposures", "outcome_rollup")
        for f in (folder / "events").rglob(f"{name}.parquet")
    )  # fmt: skip
    duck.close()
    if old is not None:
        old.close()
        info["sqlite_bytes"] = (folder / "events.db").stat().st_size
    return info


def add_tail(users: int, tail_users: int, folder: Path) -> int:
    """Events of ``tail_users`` more users, appended in ``TAIL_PARTS`` parts that stay raw (not compacted)."""
    duck = DuckDBEventStore(folder / "events", compact_parts=0)
    events = 0
    step = -(-tail_users // TAIL_PARTS)
    for lo in range(users, users + tail_users, step):
        exposures, outcomes = simulate_chunk(lo, min(lo + step, users + tail_users))
        duck.apply(exposures, outcomes, {})
        events += len(exposures) + len(outcomes)
    duck.close()
    return events


def pre_rollup_tree(workdir: Path | None) -> Path:
    """This repository as of ``PRE_ROLLUP_COMMIT``, extracted from git history into a temporary folder."""
    target = Path(tempfile.mkdtemp(prefix=f"mtrank-{PRE_ROLLUP_COMMIT}-", dir=workdir))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PRE_ROLLUP_COMMIT], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def time_report(
    kind: str, path: Path, repeats: int, memory_limit: str | None, tree: Path = ROOT
) -> dict[str, Any]:
    """Best-of-``repeats`` report times (without and with the timeline) in a fresh process, and its max RSS;
    ``tree``: the source tree whose code runs it."""
    command = [sys.executable, "-m", "benchmarks.bench_analysis", "--time-report", kind, str(path),
               "--repeats", str(repeats)] + (["--memory-limit", memory_limit] if memory_limit else [])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tree, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"timing {kind} at {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _time_report_here(kind: str, path: Path, repeats: int, memory_limit: str | None) -> None:
    config = load_analysis_config(EXAMPLE)
    if kind == "duckdb":
        store: EventStore = DuckDBEventStore(path, memory_limit=memory_limit)
    else:
        store = old_sqlite_store_class()(path)
    out: dict[str, Any] = {}
    for with_timeline in (False, True):
        times, cpu = [], []
        for _ in range(repeats if kind == "duckdb" or not with_timeline else 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            report = build_report(store, config, "bench", with_timeline=with_timeline)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
        name = "timeline" if with_timeline else "report"
        out[name], out[f"{name}_cpu"] = min(times), cpu[times.index(min(times))]
        out["users"] = report.total_users
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (big) parent across fork and exec
    peak_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))  # fmt: skip
    out["max_rss_gib"] = peak_kib / 2**20
    print(json.dumps(out))


def statistics_path(config: AnalysisConfig, users: int, repeats: int) -> float:
    """Merging 30 daily partitions of per-variant statistics for ``users`` users, then the full analysis."""
    rng = np.random.default_rng(0)
    per_day = users // DAYS // 2
    parts: list[dict[str, list[TestStatistic]]] = []
    for metric in config.metrics:
        by_variant: dict[str, list[TestStatistic]] = {v: [] for v in VARIANTS}
        for v in VARIANTS:
            for _ in range(DAYS):
                s = float(rng.poisson(per_day * 3))
                mean = SampleMean(per_day, s, s * 4)
                if metric.type == "binomial":
                    by_variant[v].append(Proportion(per_day, float(rng.binomial(per_day, 0.3))))
                elif metric.type == "ratio":
                    by_variant[v].append(Ratio(per_day, SampleMean(per_day, s / 10, s / 5), mean, s))
                elif metric.cuped:
                    from analytics.stats.models.statistics import CupedMean

                    by_variant[v].append(CupedMean(per_day, mean, mean, s * 3))
                else:
                    by_variant[v].append(mean)
        parts.append(by_variant)
    bh = config.model_copy(update={"correction": "bh"})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        merged = [{v: functools.reduce(operator.add, p[v]) for v in VARIANTS} for p in parts]
        analyse_metrics(bh, config.metrics, merged, VARIANTS[0])
        srm_p_value([per_day * DAYS] * 2, [0.5, 0.5])
        times.append(time.perf_counter() - start)
    return min(times)


def bench_size(users: int, args: argparse.Namespace, old_tree: Path | None) -> tuple[dict[str, Any], dict]:
    """Build the stores for ``users`` and time every path on them (then again with a raw tail)."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-analysis-{users}-", dir=args.workdir))
    timed: dict[str, dict[str, Any]] = {}

    def run(name: str, kind: str, path: Path, tree: Path = ROOT) -> None:
        timed[name] = time_report(kind, path, args.repeats, args.memory_limit, tree)
        timed[name]["load"] = os.getloadavg()[0]
        logger.info("%d users, %s: %s", users, name, timed[name])

    try:
        sqlite = users in (args.sqlite_sizes or [])
        info = build_stores(users, folder, sqlite, args.memory_limit)
        run("rollups", "duckdb", folder / "events")
        if old_tree is not None:
            run("pre-rollup", "duckdb", folder / "events", old_tree)
        if sqlite:
            run("sqlite", "sqlite", folder / "events.db")
        tail_users = round(users * args.tail_fraction)
        if tail_users:
            info["tail_users"], info["tail_events"] = tail_users, add_tail(users, tail_users, folder)
            run("rollups+tail", "duckdb", folder / "events")
            if old_tree is not None:
                run("pre-rollup+tail", "duckdb", folder / "events", old_tree)
        return info, timed
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000], help="users per run")
    parser.add_argument(
        "--sqlite-sizes",
        type=int,
        nargs="*",
        default=[200_000, 1_000_000],
        help="sizes at which the old SQLite path is timed too (it takes ~20 min at 1M users with the timeline)",
    )
    parser.add_argument(
        "--pre-rollup-sizes",
        type=int,
        nargs="*",
        default=None,
        help=f"sizes at which the warehouse path of commit {PRE_ROLLUP_COMMIT} (before rollups) is timed too "
        "(default: every size)",
    )
    parser.add_argument(
        "--tail-fraction",
        type=float,
        default=0.02,
        help="then this many more users (a fraction) arrive in parts not compacted yet: timed again",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-limit", default="5GB", help="DuckDB memory limit of the report process")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the stores are built (default: temp)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the markdown result here")
    parser.add_argument("--time-report", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_report:
        _time_report_here(args.time_report[0], Path(args.time_report[1]), args.repeats, args.memory_limit)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_analysis_config(EXAMPLE)
    pre_sizes = args.sizes if args.pre_rollup_sizes is None else args.pre_rollup_sizes
    old_tree = pre_rollup_tree(args.workdir) if pre_sizes else None
    load_before = os.getloadavg()[0]
    results = []
    try:
        for users in args.sizes:
            results.append((users, *bench_size(users, args, old_tree if users in pre_sizes else None)))
    finally:
        if old_tree is not None:
            shutil.rmtree(old_tree, ignore_errors=True)
    t_stats = statistics_path(config, 1_000_000, 5)
    load_after = os.getloadavg()[0]
    text = render(args, results, t_stats, load_before, load_after)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


PATHS = {
    "rollups": "warehouse, rollups (this commit)",
    "pre-rollup": f"warehouse before rollups ({PRE_ROLLUP_COMMIT})",
    "sqlite": f"old SQLite path ({SQLITE_COMMIT})",
    "rollups+tail": "warehouse, rollups + raw tail",
    "pre-rollup+tail": f"warehouse before rollups ({PRE_ROLLUP_COMMIT}) + raw tail",
}
TARGETS = {1_000_000: (1.5, 3.0), 10_000_000: (15.0, 40.0)}


def render(
    args: argparse.Namespace, results: list, t_stats: float, load_before: float, load_after: float
) -> str:
    """The markdown result: one row per size and path, the ratios to the rollup path, the store sizes."""

    def cell(value: float, target: float | None = None) -> str:
        mark = "" if target is None else (" (met)" if value < target else " (NOT met)")
        return f"{value:.2f}{mark}"

    command = (
        f"flock /tmp/mtrank-bench.lock .venv/bin/python -m benchmarks.bench_analysis --sizes "
        f"{' '.join(map(str, args.sizes))} --sqlite-sizes {' '.join(map(str, args.sqlite_sizes or []))}"
        + (
            ""
            if args.pre_rollup_sizes is None
            else f" --pre-rollup-sizes {' '.join(map(str, args.pre_rollup_sizes))}"
        )
        + f" --tail-fraction {args.tail_fraction} --repeats {args.repeats} --memory-limit {args.memory_limit}"
    )
    lines = [
        "# Analysis time for one experiment: compiled SQL on DuckDB rollups vs before rollups vs the old SQLite path",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, 1-min load average "
        f"{load_before:.1f} before and {load_after:.1f} after (per row: the load when it finished), Python "
        f"{platform.python_version()}. Reports timed in a fresh process each (best of the repeats; the old SQLite "
        "path's timeline once). CPU s: user + system time of that process (all its threads) in the best repeat, "
        "which other jobs' load does not inflate the way it does wall time; max RSS: its VmHWM.",
        "",
        "| users | path | report s | + timeline s | report CPU s | + timeline CPU s | max RSS GiB | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for users, info, timed in results:
        report_target, timeline_target = TARGETS.get(users, (None, None))
        for name, t in timed.items():
            tail = name.endswith("+tail")
            shown = f"{users:,}" + (f" + {info['tail_users']:,}" if tail else "")
            lines.append(
                f"| {shown} | {PATHS[name]} | {cell(t['report'], None if tail else report_target)} "
                f"| {cell(t['timeline'], None if tail else timeline_target)} | {t['report_cpu']:.2f} "
                f"| {t['timeline_cpu']:.2f} | {t['max_rss_gib']:.2f} | {t['load']:.1f} |"
            )
    lines += [
        "",
        "Ratios to the rollup path in the same run (wall report / wall timeline; CPU report / CPU timeline):",
        "",
    ]
    for users, _, timed in results:
        new = timed["rollups"]
        for name in ("pre-rollup", "sqlite"):
            if name in timed:
                t = timed[name]
                lines.append(
                    f"- {users:,} users, {PATHS[name]}: {t['report'] / new['report']:.1f}x / "
                    f"{t['timeline'] / new['timeline']:.1f}x wall; {t['report_cpu'] / new['report_cpu']:.1f}x / "
                    f"{t['timeline_cpu'] / new['timeline_cpu']:.1f}x CPU"
                )
    lines += [
        "",
        "Stores: " + "; ".join(
            f"{users:,} users, {info['events']:,} events: DuckDB parts {info['duckdb_bytes'] / 2**20:,.0f} MiB on "
            f"disk (rollups {info['rollup_bytes'] / 2**20:,.0f} MiB of it), written in {info['duckdb_apply_s']:.1f} s "
            f"+ compaction {info['duckdb_compact_s']:.1f} s ({info['duckdb_compact_cpu_s']:.1f} CPU s)"
            + (f"; SQLite {info['sqlite_bytes'] / 2**20:,.0f} MiB, written in {info['sqlite_apply_s']:.1f} s"
               if "sqlite_bytes" in info else "")
            + (f"; raw tail: {info['tail_events']:,} events of {info['tail_users']:,} more users in {TAIL_PARTS} parts"
               if "tail_users" in info else "")
            for users, info, _ in results
        ) + ".",
        "",
        f"Statistics engine alone (issue 7's target, 1M users from 30 daily partitions per variant, BH): "
        f"{t_stats * 1000:.1f} ms.",
        "",
        "The warehouse report runs four queries: the experiment list, the time range, the traffic timeline (users "
        "per variant per bucket; skipped without the timeline, when the users per variant come from the metric "
        "query) and one compiled query for every metric at every cut point.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
