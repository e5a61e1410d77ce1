"""The dashboard HTTP server on a free port, called over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics.metrics import load_analysis_config
from analytics.report import build_report
from analytics.server import AnalyticsServer
from analytics.store import MemoryEventStore
from tests.analytics.stats.simulated_events import simulate_experiment

EXAMPLE = Path(__file__).parents[2] / "analytics" / "examples" / "metrics.yaml"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AnalyticsServer, MemoryEventStore]]:
    store = MemoryEventStore()
    simulate_experiment(store, "ranking-dml", users=600, seed=2, variants=("control", "dml"))
    static = tmp_path_factory.mktemp("dashboard")
    (static / "index.html").write_text("<html>dashboard</html>")
    (static / "app.js").write_text("console.log(1)")
    with AnalyticsServer(
        store, load_analysis_config(EXAMPLE), port=0, dashboard_dir=static, cache_seconds=60
    ) as server:
        yield server, store


def get(server: AnalyticsServer, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_experiment_list(served) -> None:
    server, store = served
    status, ctype, body = get(server, "/api/experiments")
    assert status == 200 and ctype == "application/json"
    (summary,) = json.loads(body)
    assert summary["experiment_key"] == "ranking-dml"
    assert {v["key"]: v["users"] for v in summary["variants"]} == store.variant_counts("ranking-dml")
    assert summary["srm"]["flagged"] is False


def test_report_equals_build_report(served) -> None:
    server, store = served
    status, _, body = get(server, "/api/experiments/ranking-dml/report")
    assert status == 200
    served_report = json.loads(body)
    direct = build_report(store, load_analysis_config(EXAMPLE), "ranking-dml").to_dict()
    served_report.pop("generated_at_ms"), direct.pop("generated_at_ms")
    assert served_report == direct
    assert len(served_report["metrics"]) == 4 and served_report["timeline"] and served_report["traffic"]


def test_not_found_and_static_files(served) -> None:
    server, _ = served
    status, ctype, body = get(server, "/api/experiments/missing/report")
    assert status == 404 and "unknown experiment" in json.loads(body)["error"]
    assert get(server, "/api/nothing")[0] == 404
    status, ctype, body = get(server, "/")
    assert status == 200 and ctype.startswith("text/html") and body == b"<html>dashboard</html>"
    status, ctype, _ = get(server, "/app.js")
    assert status == 200 and "javascript" in ctype
    assert get(server, "/../../etc/passwd")[0] == 404
    assert get(server, "/%2e%2e/%2e%2e/etc/passwd")[0] == 404
    assert get(server, "/healthz")[:1] == (200,)
