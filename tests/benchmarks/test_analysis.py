"""bench_analysis: the old SQLite store, loaded from git history, still answers today's ``build_report``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from analytics.metrics import load_analysis_config
from analytics.report import build_report
from analytics.store import DuckDBEventStore
from benchmarks.bench_analysis import EXAMPLE, ROOT, SQLITE_COMMIT, build_stores, old_sqlite_store_class

HAS_OLD_COMMIT = (
    subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{SQLITE_COMMIT}:analytics/store/sqlite.py"],
        capture_output=True, check=False,
    ).returncode == 0
)  # fmt: skip


@pytest.mark.skipif(not HAS_OLD_COMMIT, reason=f"git history without commit {SQLITE_COMMIT}")
def test_the_old_sqlite_store_gives_the_same_ab_report_as_the_duckdb_store(tmp_path: Path) -> None:
    build_stores(300, tmp_path, sqlite=True, memory_limit=None)
    config = load_analysis_config(EXAMPLE)
    old = old_sqlite_store_class()(tmp_path / "events.db")
    duck = DuckDBEventStore(tmp_path / "events")
    try:
        assert old.interleaving_arms("bench") == []
        old_report = build_report(old, config, "bench", with_timeline=False)
        new_report = build_report(duck, config, "bench", with_timeline=False)
    finally:
        old.close()
        duck.close()
    assert old_report.total_users == new_report.total_users == 300
    assert old_report.variants == new_report.variants
    assert [m.name for m in old_report.metrics] == [m.name for m in new_report.metrics]
