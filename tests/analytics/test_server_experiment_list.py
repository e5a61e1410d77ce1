"""The dashboard's experiment list over real HTTP: what a listing costs the store however many experiment keys
the events name, and that an answer already cached never waits for a report being computed."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analytics.analysis_window import ALL_TIME, AnalysisWindow
from analytics.metrics import AnalysisConfig, load_analysis_config
from analytics.report import experiment_summary
from analytics.server import AnalyticsServer
from analytics.store import DuckDBEventStore, ExposureRow, MemoryEventStore, open_store
from analytics.store.warehouse import WarehouseEventStore
from proto.limits import MAX_NAME_BYTES
from tests.analytics.simulated_interleaving import simulate_interleaving
from tests.analytics.stats.simulated_events import simulate_experiment

EXAMPLE = Path(__file__).parents[2] / "analytics" / "examples" / "metrics.yaml"
pytestmark = pytest.mark.integration


def _config() -> AnalysisConfig:
    """The example config, plus an experiment with an analysis window (its entry counts only its users)."""
    config = load_analysis_config(EXAMPLE).model_dump()
    windowed = {"start": 1_000, "end": 5_000, "control": "a", "weights": {"a": 1, "b": 1}}
    config["experiments"]["windowed"] = windowed
    return AnalysisConfig.model_validate(config)


@pytest.fixture(params=["duckdb", "chdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WarehouseEventStore]:
    """A warehouse store holding a configured A/B experiment, an interleaving one and one with a window."""
    opened = DuckDBEventStore(tmp_path / "s") if request.param == "duckdb" else open_store("chdb://")
    assert isinstance(opened, WarehouseEventStore)
    simulate_experiment(opened, "ranking-dml", users=200, seed=3, variants=("control", "dml"))
    simulate_interleaving(opened, "ranking-interleave", users=20, seed=1)
    opened.apply([ExposureRow(f"w{i}", "windowed", "ab"[i % 2], f"w{i}", 900 * i) for i in range(10)], [], {})
    yield opened
    opened.close()


def _add_junk(store: WarehouseEventStore, first: int, n: int) -> None:
    """``n`` experiment keys no config names, one exposure each (any producer writes exposure events)."""
    exposures = [ExposureRow(f"j{i}", f"junk-{i:05d}", "a", f"u{i}", i) for i in range(first, first + n)]
    store.apply(exposures, [], {})


def _listing(server: AnalyticsServer, store: WarehouseEventStore, monkeypatch: pytest.MonkeyPatch) -> tuple[
    list[dict[str, Any]], int
]:  # fmt: skip
    """The served experiment list and the number of store queries it cost."""
    queries = [0]
    query = store._query

    def counted(sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        queries[0] += 1
        return query(sql)

    monkeypatch.setattr(store, "_query", counted)
    with urllib.request.urlopen(server.url + "/api/experiments", timeout=120) as resp:
        listed = json.loads(resp.read())
    monkeypatch.undo()
    return listed, queries[0]


def test_the_experiment_list_costs_the_same_queries_however_many_keys_the_events_name(
    store: WarehouseEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each key listed cost its own queries (users per variant, and on ClickHouse whether it is an
    interleaving experiment): 500 keys of one exposure each, not in the config, took 2.0 s (DuckDB) and 5.3 s
    (chDB) per listing, under the lock every other page request waits for. The list is what it was: each
    experiment's ``experiment_summary`` in the store's order, keys too long to analyse left out."""
    config = _config()
    store.apply([ExposureRow("long", "x" * (MAX_NAME_BYTES + 1), "a", "u", 1)], [], {})
    with AnalyticsServer(store, config, port=0, cache_seconds=0) as server:
        _add_junk(store, 0, 3)
        few, few_queries = _listing(server, store, monkeypatch)
        _add_junk(store, 3, 60)
        many, many_queries = _listing(server, store, monkeypatch)
    assert len(many) == len(few) + 60 == 3 + 3 + 60
    assert many_queries == few_queries
    assert many == [experiment_summary(store, config, key).to_dict() for key in store.experiments()]
    assert {e["experiment_key"]: e["kind"] for e in many if not e["experiment_key"].startswith("junk")} == {
        "ranking-dml": "ab",
        "ranking-interleave": "interleaving",
        "windowed": "ab",
    }
    assert next(e for e in many if e["experiment_key"] == "windowed")["total_users"] == 4  # 1800 .. 4500 ms


class _HeldStore(MemoryEventStore):
    """A memory store whose ``time_range`` (read by every report), once ``holding``, waits for ``release``: a
    report that takes long to compute."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.held = threading.Event()  # a report is being computed, waiting for ``release``
        self.release = threading.Event()
        self.read_while_held = threading.Event()  # the store was read by a request during another's report

    def experiments(self) -> list[str]:
        if self.held.is_set() and not self.release.is_set():
            self.read_while_held.set()
        return super().experiments()

    def time_range(self, experiment_key: str, *, window: AnalysisWindow = ALL_TIME) -> tuple[int, int]:
        if self.holding:
            self.held.set()
            self.release.wait(60)
        return super().time_range(experiment_key, window=window)


def test_a_cached_answer_does_not_wait_for_a_report_being_computed() -> None:
    """The cache's lock was held while a report was computed from the store (seconds on a large store), so
    every other request, the cached experiment list included, waited for it. Requests for the report being
    computed wait and get it, computed once."""
    store = _HeldStore()
    simulate_experiment(store, "ranking-dml", users=200, seed=3, variants=("control", "dml"))
    with AnalyticsServer(store, load_analysis_config(EXAMPLE), port=0, cache_seconds=600) as server:
        listed = json.loads(urllib.request.urlopen(server.url + "/api/experiments", timeout=10).read())
        store.holding = True
        reports: list[bytes] = []

        def report() -> None:
            path = "/api/experiments/ranking-dml/report"
            reports.append(urllib.request.urlopen(server.url + path, timeout=60).read())

        threads = [threading.Thread(target=report) for _ in range(3)]
        try:
            for thread in threads:
                thread.start()
            assert store.held.wait(30)
            answer = urllib.request.urlopen(server.url + "/api/experiments", timeout=10).read()
            assert json.loads(answer) == listed and not store.release.is_set()  # while the report is held
        finally:
            store.release.set()
            for thread in threads:
                thread.join(60)
        metrics = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    assert len(reports) == 3 and len(set(reports)) == 1
    assert 'mtrank_dashboard_report_build_seconds_count{kind="report"} 1.0' in metrics


def test_a_report_request_reads_the_store_only_when_no_report_is_being_computed() -> None:
    """The dashboard reads the store one request at a time (a connection not safe for concurrent use is
    fine): a report request asked ``store.experiments()`` before taking that turn, while another request's
    report was being computed. Unknown experiments are answered 404 and not cached."""
    store = _HeldStore()
    simulate_experiment(store, "ranking-dml", users=200, seed=3, variants=("control", "dml"))
    with AnalyticsServer(store, load_analysis_config(EXAMPLE), port=0, cache_seconds=600) as server:
        store.holding = True
        path = server.url + "/api/experiments/ranking-dml/report"
        first = threading.Thread(target=lambda: urllib.request.urlopen(path, timeout=60).read())
        second = threading.Thread(target=lambda: urllib.request.urlopen(path, timeout=60).read())
        try:
            first.start()
            assert store.held.wait(30)
            second.start()
            read = store.read_while_held.wait(2)  # set within milliseconds when the second reads at once
        finally:
            store.release.set()
            first.join(60)
            second.join(60)
        store.holding = False
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url + "/api/experiments/nope/report", timeout=10)
    assert not read
    assert missing.value.code == 404 and "report:nope" not in server._cache._entries
