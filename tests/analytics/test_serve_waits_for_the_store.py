"""``python -m analytics serve`` started before the consumer has created its store (compose starts both at once,
Kubernetes runs both in one pod): it exited with status 2 ("no event store") and crash-looped until the consumer
had written. Now it serves a waiting notice (/readyz 503) and the reports once the store appears, without a
restart; a store that can never work still fails at once in one line, and so does ``report``."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from analytics.metrics import load_analysis_config
from analytics.report import build_report
from analytics.store import DuckDBEventStore
from tests.analytics.stats.simulated_events import simulate_experiment
from tests.analytics.test_cli_analytics import EXAMPLE, run

WAITING = "no events yet: waiting for the consumer to create {store}"


@dataclass
class Served:
    """A ``serve`` process, its URL, and its stderr once it has stopped."""

    process: subprocess.Popen[str]
    url: str
    stderr: str = ""


@contextmanager
def serving(store: Path) -> Iterator[Served]:
    """``python -m analytics serve`` on ``store`` and a free port, every answer computed afresh (no cache);
    stopped with SIGTERM, which must exit 0."""
    argv = ["serve", "--store", str(store), "--metrics", str(EXAMPLE), "--port", "0", "--cache-seconds", "0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "analytics", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        started = process.stdout.readline()
        assert started.startswith("dashboard: http://127.0.0.1:"), (started, process.stderr.read())
        served = Served(process, started.split()[1].rstrip("/"))
        yield served
        process.send_signal(signal.SIGTERM)
        _, served.stderr = process.communicate(timeout=60)
        assert process.returncode == 0, served.stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _fill(store: Path, users: int) -> None:
    """What the consumer does: create the store (empty at first), then commit events to it."""
    with DuckDBEventStore(store) as events:
        simulate_experiment(events, "ranking-dml", users=users, seed=2, variants=("control", "dml"))


def _close(got: object, expected: object) -> bool:
    """JSON values equal but for the last bits of floats (DuckDB's parallel sums add in no fixed order)."""
    if isinstance(got, float) and isinstance(expected, float):
        return math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_close(got[k], expected[k]) for k in got)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(map(_close, got, expected))
    return got == expected


@pytest.mark.integration
@pytest.mark.parametrize("made", ["missing", "empty folder"])
def test_serve_waits_for_the_consumer_then_serves_reports_without_a_restart(
    tmp_path: Path, made: str
) -> None:
    store = tmp_path / "data" / "events"
    if made == "empty folder":  # a volume mounted at the store path
        store.mkdir(parents=True)
    waiting = WAITING.format(store=store)
    with serving(store) as served:
        assert get(served.url + "/healthz") == (200, "ok")  # alive: no restart, the page is served
        assert get(served.url + "/readyz") == (503, waiting)
        for path in ("/api/experiments", "/api/experiments/ranking-dml/report"):
            status, body = get(served.url + path)
            assert (status, json.loads(body)) == (503, {"error": waiting, "waiting": True}), path
        status, page = get(served.url + "/")
        assert status == 200 and 'src="app.js"' in page

        DuckDBEventStore(store).close()  # the consumer opens the store before its first commit
        assert get(served.url + "/readyz") == (200, "ready")
        assert get(served.url + "/api/experiments") == (200, "[]")

        _fill(store, users=300)
        status, body = get(served.url + "/api/experiments")
        assert status == 200 and [e["total_users"] for e in json.loads(body)] == [300]
        status, body = get(served.url + "/api/experiments/ranking-dml/report")
        served_report = json.loads(body)
        with DuckDBEventStore(store) as events:
            direct = build_report(events, load_analysis_config(EXAMPLE), "ranking-dml").to_dict()
        served_report.pop("generated_at_ms"), direct.pop("generated_at_ms")
        assert status == 200 and _close(served_report, direct)
        assert served.process.poll() is None
    logged = served.stderr.splitlines()
    assert logged.count(f"WARNING analytics.server: {waiting}") == 1, served.stderr  # once, not per request
    assert "INFO analytics.server: the event store is open: serving reports" in logged


@pytest.mark.integration
def test_the_page_says_it_waits_then_shows_the_experiments_without_a_reload(chromium, tmp_path: Path) -> None:
    from tests.dashboard.test_dashboard_browser import _wait

    store = tmp_path / "events"
    with serving(store) as served:
        chromium.get(served.url + "/?refresh=1")
        notice = WAITING.format(store=store)
        _wait(chromium, lambda d: d.find_element("id", "error").text == notice)
        assert chromium.find_element("id", "error").get_attribute("class") == "banner warn"
        assert chromium.find_element("id", "status-dot").get_attribute("class") == "dot waiting"
        _fill(store, users=120)
        _wait(chromium, lambda d: d.find_elements("css selector", 'tr[data-experiment="ranking-dml"]'))
        row = chromium.find_element("css selector", 'tr[data-experiment="ranking-dml"]')
        assert row.find_element("css selector", '[data-field="total_users"]').text == "120"
        _wait(chromium, lambda d: not d.find_element("id", "error").is_displayed())
        assert chromium.find_element("id", "status-dot").get_attribute("class") == "dot up"
        # The browser is shared by the session: stop this page's refreshes before its server goes, and take its
        # console log (the 503s of the waiting state are expected here), or later tests read them as theirs.
        chromium.get("about:blank")
        chromium.get_log("browser")


def test_a_store_that_cannot_work_and_report_still_fail_at_once(tmp_path: Path, capsys) -> None:
    not_a_store = tmp_path / "notes"
    not_a_store.mkdir()
    (not_a_store / "todo.txt").write_text("x")
    a_file = tmp_path / "events.txt"
    a_file.write_text("not a store")
    serve = ["serve", "--metrics", str(EXAMPLE), "--port", "0", "--store"]
    cases = [
        ([*serve, str(not_a_store)], f"{not_a_store} is a folder but not an event store"),
        ([*serve, str(a_file)], f"{a_file} is a file, not an event store folder"),
        ([*serve, str(a_file / "events")], f"none can be created there: {a_file} is not a folder"),
        ([*serve, "clickhouse://:8123/db"], "expected clickhouse://"),
        (
            ["report", "x", "--metrics", str(EXAMPLE), "--store", str(tmp_path / "missing")],
            "no event store at",
        ),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "missing").exists()


def _unprivileged() -> list[str]:
    """A prefix under which permission bits apply: root without the capabilities that bypass them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permission bits cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_an_unreadable_store_is_one_line_for_serve_and_report(tmp_path: Path) -> None:
    """Permission denied on the store or a folder above it was a PermissionError traceback (exit 1). The six
    commands run at once: each is a process of its own, most of whose time is importing the CLI."""
    locked = tmp_path / "locked"
    locked.mkdir()
    unreadable_file = tmp_path / "events.file"
    unreadable_file.write_text("x")
    unreadable_store = tmp_path / "events"
    _fill(unreadable_store, users=10)
    for path in (locked, unreadable_file, unreadable_store):
        path.chmod(0)
    try:
        started = [
            (store, command, subprocess.Popen(
                [*_unprivileged(), sys.executable, "-m", "analytics", *command, "--store", str(store),
                 "--metrics", str(EXAMPLE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
            for store in (locked / "events", unreadable_file, unreadable_store)
            for command in (["serve", "--port", "0"], ["report", "ranking-dml"])
        ]  # fmt: skip
        for store, command, process in started:
            try:
                _, stderr = process.communicate(timeout=120)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            assert process.returncode == 2, (store, command, stderr)
            assert stderr == f"error: cannot read the event store {store}: Permission denied\n"
    finally:
        for path in (locked, unreadable_file, unreadable_store):
            path.chmod(0o755)
