"""The dashboard server's periodic SRM check: each running experiment's users per variant and sample-ratio
mismatch at /metrics, without anyone opening a report (the gauges that MtrankExperimentSampleRatioMismatch
reads)."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from analytics.metrics import AnalysisConfig, load_analysis_config
from analytics.report import experiment_summary
from analytics.server import AnalyticsServer, DashboardMetrics, ReportCache, SrmExporter
from analytics.store import DuckDBEventStore, EventStore, MemoryEventStore, open_store
from analytics.store.clickhouse_store import ClickHouseEventStore
from tests.analytics.simulated_interleaving import simulate_interleaving
from tests.analytics.stats.simulated_events import simulate_experiment

EXAMPLE = Path(__file__).parents[2] / "analytics" / "examples" / "metrics.yaml"
EXPORTED = ("mtrank_experiment_srm_p_value", "mtrank_experiment_srm_flagged", "mtrank_experiment_users")
pytestmark = pytest.mark.integration


def _config(**experiments: dict) -> AnalysisConfig:
    """The example config with these experiments' settings."""
    config = load_analysis_config(EXAMPLE).model_dump()
    config["experiments"] = experiments
    return AnalysisConfig.model_validate(config)


HALVES = {"control": 0.5, "treatment": 0.5}
CONFIG = _config(broken={"weights": HALVES}, healthy={"weights": HALVES}, old={"status": "stopped"})


def _simulate(store: EventStore) -> None:
    """``broken``: 55/45 against the configured halves (chi-square p about 8e-6, below srm_threshold 0.001);
    ``healthy`` split as configured; ``old`` stopped; ``solo`` one variant (nothing to test); an interleaving
    experiment (no split to check)."""
    simulate_experiment(store, "broken", users=2000, seed=1, weights=(0.55, 0.45))
    simulate_experiment(store, "healthy", users=2000, seed=2)
    simulate_experiment(store, "old", users=300, seed=3, weights=(0.9, 0.1))
    simulate_experiment(store, "solo", users=50, seed=4, variants=("control",), weights=(1.0,))
    simulate_interleaving(store, "ranking-interleave", users=30, seed=5)


Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _series(text: str, names: tuple[str, ...] = EXPORTED) -> Series:
    """The samples of a Prometheus text page whose name is in ``names``, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in names
    }


def _expected(store: EventStore, config: AnalysisConfig, keys: list[str]) -> Series:
    """What the gauges must say for these experiments: their ``experiment_summary``, as the report says it."""
    expected: Series = {}
    for key in keys:
        summary = experiment_summary(store, config, key)
        for variant in summary.variants:
            labels = frozenset({"experiment": key, "variant": variant.key}.items())
            expected[("mtrank_experiment_users", labels)] = variant.users
        experiment = frozenset({"experiment": key}.items())
        if summary.kind == "ab":
            expected[("mtrank_experiment_srm_flagged", experiment)] = summary.srm.flagged
            if summary.srm.p_value is not None:
                expected[("mtrank_experiment_srm_p_value", experiment)] = summary.srm.p_value
    return expected


def _metrics(server: AnalyticsServer) -> str:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def _wait_for(server: AnalyticsServer, done: Callable[[str], bool]) -> str:
    """/metrics once ``done`` holds for it (the check runs in the server's own thread), else the last page."""
    for _ in range(400):
        text = _metrics(server)
        if done(text):
            break
        time.sleep(0.05)
    return text


def test_the_running_experiments_are_checked_without_a_report_being_opened() -> None:
    """An SRM was only computed when someone opened the experiment list or a report: nothing told Prometheus.
    Every running experiment's users per variant, SRM flag and p-value (where it can be tested) are exported
    as the report computes them; the stopped experiment has no series, the interleaving one users only."""
    store = MemoryEventStore()
    _simulate(store)
    with AnalyticsServer(store, CONFIG, port=0, srm_interval_s=0.05) as server:
        text = _wait_for(server, lambda page: "mtrank_experiment_users{" in page)  # the last ones set
    exported = _series(text)
    assert exported == _expected(store, CONFIG, ["broken", "healthy", "solo", "ranking-interleave"])
    flag = {
        dict(labels)["experiment"]: v for (name, labels), v in exported.items() if name.endswith("flagged")
    }
    assert flag == {"broken": 1.0, "healthy": 0.0, "solo": 0.0}
    assert exported[("mtrank_experiment_srm_p_value", frozenset({"experiment": "broken"}.items()))] < 1e-4
    builds = _series(text, ("mtrank_dashboard_report_build_seconds_count",))
    assert builds[("mtrank_dashboard_report_build_seconds_count", frozenset({("kind", "srm_check")}))] >= 1


def test_the_series_of_an_experiment_gone_from_the_store_are_removed() -> None:
    """An experiment whose events were deleted from ClickHouse is no longer analysed: its series go, the
    others stay as they were (set before the stale ones are removed, so no scrape misses them)."""
    with open_store("chdb://") as store:
        assert isinstance(store, ClickHouseEventStore)
        _simulate(store)
        metrics = DashboardMetrics()
        exporter = SrmExporter(ReportCache(store, CONFIG, metrics), interval_s=3600)
        exporter.refresh()
        before = _series(generate_latest(metrics.registry).decode())
        assert before == _expected(store, CONFIG, ["broken", "healthy", "solo", "ranking-interleave"])
        store.client.command(f"DELETE FROM {store.client.database}.exposures WHERE experiment = 'broken'")
        assert "broken" not in store.experiments()
        exporter.refresh()
        after = _series(generate_latest(metrics.registry).decode())
        assert after == _expected(store, CONFIG, ["healthy", "solo", "ranking-interleave"])
    assert {key for key in before if ("experiment", "broken") not in key[1]} == after.keys()


def test_a_store_that_fails_its_reads_is_counted_and_the_server_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read that fails (here: the store closed) is counted and logged in one line; the gauges keep their
    last values, so an SRM alert firing goes on firing. The check goes on running and the server answers."""
    store = DuckDBEventStore(tmp_path / "events")
    simulate_experiment(store, "broken", users=2000, seed=1, weights=(0.55, 0.45))
    metrics = DashboardMetrics()
    exporter = SrmExporter(ReportCache(store, CONFIG, metrics), interval_s=3600)
    exporter.refresh()
    exported = _series(generate_latest(metrics.registry).decode())
    store.close()
    with caplog.at_level(logging.WARNING, logger="analytics.server"):
        exporter.refresh()
    assert _series(generate_latest(metrics.registry).decode()) == exported
    assert metrics.registry.get_sample_value("mtrank_experiment_summary_failures_total") == 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "analytics.server"]
    assert line.startswith("SRM check failed, the gauges keep their last values: StoreClosed: event store ")
    assert "\n" not in line
    with AnalyticsServer(store, CONFIG, port=0, srm_interval_s=0.05) as server:
        text = _wait_for(server, lambda page: _failures(page) >= 2)  # the check outlived its first failure
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as resp:
            assert resp.status == 200
    assert _failures(text) >= 2 and not _series(text)


def _failures(text: str) -> float:
    name = "mtrank_experiment_summary_failures_total"
    return _series(text, (name,)).get((name, frozenset()), 0.0)


class _HeldStore(MemoryEventStore):
    """A memory store whose experiment listing, once ``holding``, waits for ``release``: a check that reads a
    large store for long."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.held = threading.Event()
        self.release = threading.Event()

    def variant_counts_by_experiment(self) -> dict[str, dict[str, int]]:
        if self.holding:
            self.held.set()
            self.release.wait(60)
        return super().variant_counts_by_experiment()


def test_a_check_reading_the_store_holds_up_no_cached_answer() -> None:
    """The check runs in a thread of its own and reads the store in the requests' turn: while it reads, the
    cached experiment list, /healthz and /metrics are answered."""
    store = _HeldStore()
    simulate_experiment(store, "healthy", users=200, seed=2)
    with AnalyticsServer(store, CONFIG, port=0, cache_seconds=600, srm_interval_s=0.05) as server:
        listed = urllib.request.urlopen(server.url + "/api/experiments", timeout=10).read()
        store.holding = True
        try:
            assert store.held.wait(30)
            for path in ("/api/experiments", "/healthz", "/metrics"):
                with urllib.request.urlopen(server.url + path, timeout=10) as resp:
                    assert resp.status == 200 and not store.release.is_set(), path
                    if path == "/api/experiments":
                        assert resp.read() == listed
        finally:
            store.holding = False
            store.release.set()


def test_at_most_the_largest_running_experiments_are_exported(caplog: pytest.LogCaptureFixture) -> None:
    """Experiment keys come from events: a producer writing junk keys added series without bound. Past the cap
    the running experiments with the most users are exported, and the cap is logged once, not every check."""
    store = MemoryEventStore()
    _simulate(store)  # running: broken and healthy (2,000 users each), ranking-interleave (30), solo (50)
    metrics = DashboardMetrics()
    exporter = SrmExporter(ReportCache(store, CONFIG, metrics), interval_s=3600, max_experiments=2)
    with caplog.at_level(logging.WARNING, logger="analytics.server"):
        exporter.refresh()
        exporter.refresh()
    exported = _series(generate_latest(metrics.registry).decode())
    assert exported == _expected(store, CONFIG, ["broken", "healthy"])
    [line] = [r.getMessage() for r in caplog.records if r.name == "analytics.server"]
    assert line == (
        "SRM check: 4 running experiments, exporting the 2 with the most users (--srm-max-experiments)"
    )
