"""The command line: compare and srm contracts, power, report against real stores, migration, store errors."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from analytics.__main__ import main
from analytics.analysis_window import iso_ms
from analytics.kafka.broker import free_port
from analytics.store import DuckDBEventStore, ExposureRow, MemoryEventStore, TopicPartition, open_store
from tests.analytics.stats.simulated_events import START_MS, simulate_experiment

EXAMPLE = Path(__file__).parents[2] / "analytics" / "examples" / "metrics.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, payload: dict) -> str:
    path = tmp_path / "input.json"
    path.write_text(json.dumps(payload))
    return str(path)


def test_compare_mean_matches_scipy(tmp_path: Path, capsys) -> None:
    payload = {
        "metric_type": "mean",
        "difference_type": "absolute",
        "alpha": 0.05,
        "sequential": False,
        "control": {"n": 1000, "sum": 10000, "sum_squares": 120000},
        "treatment": {"n": 1200, "sum": 12300, "sum_squares": 150000},
    }
    code, out, _ = run(capsys, "compare", "--input", write(tmp_path, payload))
    result = json.loads(out)
    reference = scipy_stats.ttest_ind_from_stats(
        10.25, (23925 / 1199) ** 0.5, 1200, 10.0, (20000 / 999) ** 0.5, 1000, equal_var=False
    )
    assert code == 0
    assert result["estimate"] == pytest.approx(0.25)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
    assert result["se"] == pytest.approx(0.191438, abs=1e-6)
    assert len(result["ci"]) == 2 and result["ci"][0] < 0.25 < result["ci"][1]


def test_compare_binomial_relative_sequential(tmp_path: Path, capsys) -> None:
    payload = {
        "metric_type": "binomial",
        "difference_type": "relative",
        "sequential": True,
        "control": {"n": 10000, "sum": 1000},
        "treatment": {"n": 10000, "sum": 1100},
    }
    result = json.loads(run(capsys, "compare", "--input", write(tmp_path, payload))[1])
    assert result["estimate"] == pytest.approx(0.1)
    assert result["sequential"] is True
    assert (result["ci"][0] > 0) == (result["p_value"] < 0.05)


def test_compare_ratio_and_cuped(tmp_path: Path, capsys) -> None:
    arm = {
        "n": 1000,
        "num_sum": 300,
        "num_sum_squares": 500,
        "den_sum": 3000,
        "den_sum_squares": 12000,
        "num_den_sum_product": 1200,
    }
    payload = {
        "metric_type": "ratio",
        "difference_type": "absolute",
        "control": arm,
        "treatment": {**arm, "num_sum": 330},
    }
    result = json.loads(run(capsys, "compare", "--input", write(tmp_path, payload))[1])
    assert result["estimate"] == pytest.approx(0.01)
    cuped_arm = {
        "n": 500,
        "sum": 5000,
        "sum_squares": 60000,
        "pre_sum": 4900,
        "pre_sum_squares": 58000,
        "post_pre_sum_product": 57000,
    }
    payload = {
        "metric_type": "mean",
        "control": cuped_arm,
        "treatment": {**cuped_arm, "sum": 5200, "post_pre_sum_product": 58900},
    }
    result = json.loads(run(capsys, "compare", "--input", write(tmp_path, payload))[1])
    assert result["cuped"] is True and result["theta"] > 0
    plain = json.loads(
        run(capsys, "compare", "--input", write(tmp_path, {**payload, "control": {k: cuped_arm[k] for k in ("n", "sum", "sum_squares")},
                                                           "treatment": {"n": 500, "sum": 5200, "sum_squares": 60000}}))[1]
    )  # fmt: skip
    assert result["se"] < plain["se"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"metric_type": "mean", "control": {"n": 10, "sum": 1}, "treatment": {"n": 10, "sum": 1, "sum_squares": 2}}, "control: mean arms need ['sum_squares']"),
        ({"metric_type": "median", "control": {"n": 1}, "treatment": {"n": 1}}, "metric_type"),
        ({"metric_type": "binomial", "control": {"n": 10, "sum": 1, "n_users": 3}, "treatment": {"n": 10, "sum": 1}}, "control.n_users: Extra inputs"),
        ({"metric_type": "binomial", "control": {"n": 10, "sum": 1, "num_sum": 3}, "treatment": {"n": 10, "sum": 1}}, "do not apply"),
    ],
)  # fmt: skip
def test_compare_errors_name_the_field(tmp_path: Path, capsys, payload, message) -> None:
    code, _, err = run(capsys, "compare", "--input", write(tmp_path, payload))
    assert code == 2 and message in err and "Traceback" not in err


def test_srm_prints_the_p_value(capsys) -> None:
    code, out, _ = run(capsys, "srm", "--counts", "1000", "1200", "--weights", "0.5", "0.5")
    assert code == 0
    assert float(out) == pytest.approx(scipy_stats.chisquare([1000, 1200]).pvalue, rel=1e-5)
    flagged = json.loads(run(capsys, "srm", "--counts", "1000", "1200", "--json")[1])
    assert flagged["flagged"] is True
    assert run(capsys, "srm", "--counts", "1000", "1200", "--weights", "1")[0] == 2


def test_power(capsys) -> None:
    """Relative lifts (the default), so the relative test's power: in 40,000 seeded simulated experiments
    through its ``TTest`` 30,935 users detect +10% on 0.1 in 0.800 of them and +12.94% on a mean of 10 with
    sd 10 is detected in 0.799 with 2000 users (the absolute test's 29,496 and 12.53% gave 0.781 and 0.772)."""
    out = json.loads(
        run(capsys, "power", "--metric-type", "binomial", "--baseline", "0.1", "--effect", "0.1")[1]
    )
    assert out["required_users"] == pytest.approx(30935, abs=4)
    out = json.loads(
        run(capsys, "power", "--metric-type", "mean", "--baseline", "10", "--std", "10", "--users", "2000")[1]
    )
    assert out["mde"] == pytest.approx(0.1294, abs=1e-3)


def test_report_table_and_json_from_the_duckdb_store(tmp_path: Path, capsys) -> None:
    db = tmp_path / "events"
    with DuckDBEventStore(db) as store:
        simulate_experiment(store, "ranking-dml", users=800, seed=4, variants=("control", "dml"))
    code, out, _ = run(capsys, "report", "ranking-dml", "--store", str(db), "--metrics", str(EXAMPLE))
    assert code == 0
    assert "experiment ranking-dml (running), control control, 800 users, SRM p=" in out
    for name in (
        "click_through",
        "ctr [ratio]",
        "watch_seconds [continuous, cuped]",
        "impressions_per_user [count, guardrail]",
    ):
        assert name in out
    report = json.loads(
        run(capsys, "report", "ranking-dml", "--store", str(db), "--metrics", str(EXAMPLE), "--json")[1]
    )
    assert report["total_users"] == 800 and len(report["metrics"]) == 4
    code, _, err = run(capsys, "report", "nope", "--store", str(db), "--metrics", str(EXAMPLE))
    assert code == 2 and "no experiment 'nope'" in err
    code, _, err = run(
        capsys, "report", "x", "--store", str(tmp_path / "missing.db"), "--metrics", str(EXAMPLE)
    )
    assert code == 2 and "no event store" in err


def test_module_entry_point_and_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "analytics", "srm", "--counts", "50", "50"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(done.stdout) == pytest.approx(1.0)
    help_text = subprocess.run(
        [sys.executable, "-m", "analytics", "compare", "--help"], capture_output=True, text=True
    ).stdout
    assert "sum_squares" in help_text


def test_package_import_stays_light() -> None:
    code = "import sys, analytics; assert 'statsmodels' not in sys.modules and 'scipy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_table_explains_error_codes(tmp_path: Path, capsys) -> None:
    db = tmp_path / "events"
    with DuckDBEventStore(db) as store:
        simulate_experiment(store, "exp", users=100, seed=6)
        store.apply([ExposureRow("x-lonely", "exp", "lonely", "lonely-user", START_MS)], [], {})
    code, out, _ = run(capsys, "report", "exp", "--store", str(db), "--metrics", str(EXAMPLE))
    assert code == 0
    assert "lonely" in out and "NO_UNITS: an arm has fewer than 2 units" in out


def _old_sqlite_store(path: Path) -> None:
    """A SQLite event store as the previous release wrote it (schema v1)."""
    import sqlite3

    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE exposures (experiment TEXT, user_id TEXT, variant TEXT, first_ms INTEGER, first_event_id TEXT,
                                last_ms INTEGER, PRIMARY KEY (experiment, user_id)) WITHOUT ROWID;
        CREATE TABLE outcomes (user_id TEXT, event_id TEXT, metric TEXT, ts INTEGER, value REAL,
                               PRIMARY KEY (user_id, event_id)) WITHOUT ROWID;
        CREATE TABLE offsets (topic TEXT, partition INTEGER, last_offset INTEGER, PRIMARY KEY (topic, partition));
        """
    )
    reference = MemoryEventStore()
    simulate_experiment(reference, "ranking-dml", users=300, seed=8, variants=("control", "dml"))
    for user, (first_ms, event_id, variant, last_ms) in reference._exposures["ranking-dml"].items():
        db.execute("INSERT INTO exposures VALUES (?, ?, ?, ?, ?, ?)",
                   ("ranking-dml", user, variant, first_ms, event_id, last_ms + 5))  # fmt: skip
    for user, events in reference._outcomes.items():
        for (metric, event_id), (ts, value) in events.items():
            db.execute("INSERT INTO outcomes VALUES (?, ?, ?, ?, ?)", (user, event_id, metric, ts, value))
    db.execute("INSERT INTO offsets VALUES ('mtrank.outcomes', 3, 41)")
    db.commit()
    db.close()


@pytest.mark.parametrize("target", ["duckdb", "chdb"])
def test_migrate_copies_a_sqlite_store_and_checks_the_counts(tmp_path: Path, capsys, target: str) -> None:
    old = tmp_path / "events.db"
    _old_sqlite_store(old)
    to = str(tmp_path / "events") if target == "duckdb" else "chdb://"
    code, out, err = run(capsys, "migrate", "--from", str(old), "--to", to)
    assert code == 0, err
    assert json.loads(out) == {"from": str(old), "to": to, "exposed_users": 300, "outcomes": json.loads(out)["outcomes"],
                               "offsets": 1}  # fmt: skip
    if target == "duckdb":
        with open_store(to) as store:
            assert store.counts()["exposed_users"] == 300
            assert store.offsets() == {TopicPartition("mtrank.outcomes", 3): 41}
            start, end = store.time_range("ranking-dml")
            assert end - start > 0
        code, out, _ = run(capsys, "report", "ranking-dml", "--store", to, "--metrics", str(EXAMPLE))
        assert code == 0 and "300 users" in out
        # into a store that already holds events: refused, nothing written
        code, _, err = run(capsys, "migrate", "--from", str(old), "--to", to)
        assert code == 2 and "already holds events" in err and err.count("\n") == 1


def test_migrate_a_store_of_the_first_sqlite_schema_with_a_retried_outcome(tmp_path: Path, capsys) -> None:
    """The first SQLite schema keyed outcomes by (user, metric, time, event id): a retry (the event's id, a
    later time) is two rows there and one event in the new stores; the count check must expect one."""
    import sqlite3

    old = tmp_path / "first.db"
    db = sqlite3.connect(old)
    db.executescript(
        """
        CREATE TABLE exposures (experiment TEXT, user_id TEXT, variant TEXT, first_ms INTEGER,
                                first_event_id TEXT, last_ms INTEGER, PRIMARY KEY (experiment, user_id));
        CREATE TABLE outcomes (user_id TEXT, metric TEXT, ts INTEGER, event_id TEXT, value REAL,
                               PRIMARY KEY (user_id, metric, ts, event_id)) WITHOUT ROWID;
        CREATE TABLE offsets (topic TEXT, partition INTEGER, last_offset INTEGER,
                              PRIMARY KEY (topic, partition));
        INSERT INTO exposures VALUES ('exp', 'u1', 'a', 10, 'x1', 10), ('exp', 'u2', 'b', 20, 'x2', 20);
        INSERT INTO outcomes VALUES ('u1', 'buy', 30, 'o1', 4.0), ('u1', 'buy', 35, 'o1', 4.0),
                                    ('u2', 'buy', 40, 'o2', 1.0);
        """
    )
    db.commit()
    db.close()
    to = str(tmp_path / "events")
    code, out, err = run(capsys, "migrate", "--from", str(old), "--to", to)
    assert code == 0, err
    assert json.loads(out)["outcomes"] == 2
    with open_store(to) as store:
        assert list(store.user_metric_values("exp", "buy")) == [("a", 4.0, 1, 0.0), ("b", 1.0, 1, 0.0)]


def test_store_errors_are_one_line(tmp_path: Path, capsys) -> None:
    old = tmp_path / "events.db"
    _old_sqlite_store(old)
    cases = [
        (["report", "x", "--store", "postgres://h/db"], "unsupported store URL 'postgres://h/db'"),
        (["report", "x", "--store", str(old)], "is a SQLite event store (the previous format)"),
        (["serve", "--store", f"clickhouse://127.0.0.1:{free_port()}/mtrank"], "cannot reach ClickHouse at 127.0.0.1:"),
        (["report", "x", "--store", "clickhouse://:8123/db"], "expected clickhouse://"),
        (["migrate", "--from", str(tmp_path / "nope.db"), "--to", str(tmp_path / "new")], "no SQLite event store at"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv, *(["--metrics", str(EXAMPLE)] if argv[0] != "migrate" else []))
        assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database")
    code, _, err = run(capsys, "migrate", "--from", str(not_sqlite), "--to", str(tmp_path / "made"))
    assert code == 2 and "is not a SQLite event store" in err
    assert not (tmp_path / "new").exists() and not (tmp_path / "made").exists()  # no empty store left behind


def test_an_unreachable_clickhouse_is_one_line_on_stderr() -> None:
    """In a real process (in-process runs hide log records from capsys): the HTTP client logged a warning per
    failed attempt before the error, and the error quoted its retry machinery instead of the reason."""
    port = free_port()
    found = subprocess.run(
        [sys.executable, "-m", "analytics", "report", "x", "--store", f"clickhouse://127.0.0.1:{port}/db",
         "--metrics", str(EXAMPLE)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert found.returncode == 2
    assert found.stderr == f"error: cannot reach ClickHouse at 127.0.0.1:{port}: Connection refused\n"


def test_a_chdb_store_another_process_holds_is_one_line(tmp_path: Path) -> None:
    """chDB locks its data folder: a second process on one chdb:/// path got a RuntimeError traceback."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom analytics.store.clickhouse_store import ChdbClient\n"
         f"ChdbClient({str(tmp_path)!r})\nprint('open', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        found = subprocess.run(
            [sys.executable, "-m", "analytics", "report", "x", "--store", f"chdb://{tmp_path}",
             "--metrics", str(EXAMPLE)], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert found.returncode == 2 and found.stderr.count("\n") == 1, found.stderr
    assert found.stderr.startswith("error: chDB cannot open ") and "one process per chDB store path" in found.stderr


def test_bad_input_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    arm = {"n": 5, "sum": 1, "sum_squares": 100}
    (tmp_path / "nan.json").write_text(json.dumps({"metric_type": "mean", "control": {**arm, "sum": float("nan")}, "treatment": arm}))
    (tmp_path / "binomial.json").write_text(
        json.dumps({"metric_type": "binomial", "control": {"n": 5, "sum": 10}, "treatment": {"n": 5, "sum": 1}})
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    store = tmp_path / "events"
    with DuckDBEventStore(store) as events:
        simulate_experiment(events, "ranking-dml", users=50, seed=1, variants=("control", "dml"))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(store, corrupt)
    (corrupt / "mtrank-store.json").write_text("garbage")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    serve = ["serve", "--store", str(store), "--metrics", str(EXAMPLE)]
    cases = [
        (["compare", "--input", str(binary)], "cannot read"),  # UnicodeDecodeError
        (["compare", "--input", str(tmp_path / "nan.json")], "control.sum: Input should be a finite number"),  # crashed printing NaN
        (["compare", "--input", str(tmp_path / "binomial.json")], "must be in [0, n=5]"),  # 10 successes of 5 users
        (["srm", "--counts", "10", "20", "--weights", "nan", "1"], "weights must be finite"),  # printed nan
        (["power", "--metric-type", "binomial", "--baseline", "0.1", "--users", "0"], "--users must be > 0"),  # ZeroDivisionError
        (["power", "--metric-type", "binomial", "--baseline", "0.1", "--users", "inf"], "--users must be a finite"),
        (["power", "--metric-type", "mean", "--baseline", "1", "--std", "-1", "--users", "100"], "--std must be > 0"),
        (["power", "--metric-type", "binomial", "--baseline", "0.1", "--users", "100", "--power", "2"], "--power"),
        (["power", "--metric-type", "binomial", "--baseline", "0.1", "--effect", "0.1", "--power", "0.01"], "--power must be in (--alpha, 1)"),  # named no flag
        # a reader made a store of an empty folder (any folder: a typo'd path)
        (["report", "x", "--store", str(empty), "--metrics", str(EXAMPLE)], f"no event store at {empty}"),
        (["report", "x", "--store", str(corrupt), "--metrics", str(EXAMPLE)], "mtrank-store.json is corrupt"),
        ([*serve, "--port", str(taken.getsockname()[1])], "Address already in use"),  # AttributeError in server_close
    ]
    with taken:
        for argv, message in cases:
            code, _, err = run(capsys, *argv)
            assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not any(empty.iterdir())


def test_a_corrupt_part_manifest_is_a_store_error(tmp_path: Path, capsys) -> None:
    store = tmp_path / "events"
    with DuckDBEventStore(store) as events:
        simulate_experiment(events, "ranking-dml", users=50, seed=1, variants=("control", "dml"))
    manifest = next((store / "parts").glob("*/manifest.json"))
    manifest.write_text("{")
    code, _, err = run(capsys, "report", "ranking-dml", "--store", str(store), "--metrics", str(EXAMPLE))
    assert code == 2 and f"{manifest} is corrupt" in err and "Traceback" not in err, err


def test_consumer_metrics_port_in_use_fails_at_once(tmp_path: Path, capsys) -> None:
    """Before Kafka's bootstrap wait, without a traceback (start_http_server's OSError escaped)."""
    from analytics.consumer.__main__ import main as consumer_main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--bootstrap", "127.0.0.1:1", "--store", str(tmp_path / "store"), "--metrics-port", str(port)]
        assert consumer_main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: --metrics-port: cannot listen on 127.0.0.1:{port}" in err and not (tmp_path / "store").exists()


def test_consumer_max_seconds_bounds_the_wait_for_kafka(tmp_path: Path, capsys) -> None:
    """kafka-python waits 30 s for a first broker by default; --max-seconds 1 gave up only after those 30 s."""
    from analytics.consumer.__main__ import main as consumer_main

    argv = ["--bootstrap", f"127.0.0.1:{free_port()}", "--store", str(tmp_path / "store"), "--max-seconds", "1"]
    started = time.monotonic()
    assert consumer_main(argv) == 2
    assert time.monotonic() - started < 15
    assert "cannot reach Kafka at --bootstrap 127.0.0.1:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value",
    [("--max-seconds", "-1"), ("--connect-timeout-s", "0"), ("--session-timeout-ms", "0"),
     ("--commit-interval-s", "nan"), ("--commit-every-events", "0"), ("--lag-interval-s", "-5"),
     ("--idle-exit-s", "inf")],
)  # fmt: skip
def test_consumer_numeric_flags_are_checked_first(tmp_path: Path, capsys, flag: str, value: str) -> None:
    """Before the store is created or Kafka is called (a NaN commit interval never committed by time)."""
    from analytics.consumer.__main__ import main as consumer_main

    with pytest.raises(SystemExit) as info:
        consumer_main(["--bootstrap", "127.0.0.1:1", "--store", str(tmp_path / "store"), flag, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {flag}: must be " in err and f", got '{value}'" in err, err
    assert not (tmp_path / "store").exists()


def test_a_corrupt_part_file_is_a_store_error(tmp_path: Path, capsys) -> None:
    """A Parquet file truncated or overwritten on disk: one line naming the store (DuckDB's exception escaped)."""
    store = tmp_path / "events"
    with DuckDBEventStore(store) as events:
        simulate_experiment(events, "ranking-dml", users=50, seed=1, variants=("control", "dml"))
    part = next((store / "parts").glob("*/exposures.parquet"))
    part.write_bytes(part.read_bytes()[: len(part.read_bytes()) // 2])
    code, _, err = run(capsys, "report", "ranking-dml", "--store", str(store), "--metrics", str(EXAMPLE))
    assert code == 2 and f"error: {store}: a part cannot be read" in err and "Traceback" not in err, err


@pytest.mark.integration
def test_serve_answers_the_request_in_flight_on_sigterm_and_exits_0(tmp_path: Path) -> None:
    """SIGTERM (every container stop) killed the dashboard mid-answer (exit status -15); Ctrl-C closed the
    store under the report being computed (500)."""
    store = tmp_path / "events"
    with DuckDBEventStore(store) as events:
        simulate_experiment(events, "ranking-dml", users=200, seed=3)
    argv = ["serve", "--store", str(store), "--metrics", str(EXAMPLE), "--port", "0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "analytics", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        started = process.stdout.readline()
        assert started.startswith("dashboard: http://127.0.0.1:") and str(store) in started, started
        port = int(started.split("/")[2].split(":")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"GET /api/experiments HTTP/1.1\r\nHost: dashboard\r\n")  # accepted, not complete
            time.sleep(0.5)  # let the server take the connection before the signal
            process.send_signal(signal.SIGTERM)
            client.sendall(b"\r\n")
            answer = client.makefile("rb").read()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert answer.startswith(b"HTTP/1.0 200 OK") and b"ranking-dml" in answer, answer[:300]


def test_serve_help_says_what_it_does_and_every_flag_has_help(capsys) -> None:
    """--host and --port had no help (so no default shown), the command no description, and the ClickHouse
    credentials the Kubernetes manifests pass as $CLICKHOUSE_USER/$CLICKHOUSE_PASSWORD were not mentioned."""
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Serve the A/B dashboard" in text and "$CLICKHOUSE_USER and $CLICKHOUSE_PASSWORD" in text
    assert "HTTP port (0 = pick a free one) (default: 8080)" in text and "(default: 127.0.0.1)" in text


def _windowed_store(tmp_path: Path) -> tuple[str, str]:
    """A store with a user first exposed each second from 0 to 9 s; a config windowing it to [2 s, 8 s)."""
    db = tmp_path / "events"
    with DuckDBEventStore(db) as store:
        store.apply(
            [ExposureRow(f"e{i}", "exp", ("control", "dml")[i % 2], f"u{i}", 1000 * i) for i in range(10)],
            [],
            {},
        )
    config = tmp_path / "analysis.yaml"
    config.write_text(
        "metrics:\n  - {name: revenue, type: mean, event: buy}\n"
        "experiments:\n  exp: {start: 1970-01-01T00:00:02Z, end: 1970-01-01T00:00:08Z}\n"
    )
    return str(db), str(config)


@pytest.mark.parametrize(
    ("flags", "window", "users"),
    [
        ([], (2000, 8000), 6),  # the config's window
        (["--start", "1970-01-01T00:00:05Z"], (5000, 8000), 3),  # one side: the config's end stays
        (["--end", "1970-01-01T01:00:04+01:00"], (2000, 4000), 2),  # any timezone
        (["--start", "0", "--end", "1970-01-01T00:00:10.000Z"], (0, 10_000), 10),  # epoch ms, as in config
    ],
)  # fmt: skip
def test_report_start_and_end_override_the_config_window(
    tmp_path: Path, capsys, flags: list[str], window: tuple[int, int], users: int
) -> None:
    db, config = _windowed_store(tmp_path)
    code, out, err = run(capsys, "report", "exp", "--store", db, "--metrics", config, "--json", *flags)
    report = json.loads(out)
    assert code == 0 and report["analysis_window"] == {"start_ms": window[0], "end_ms": window[1]}, err
    assert report["total_users"] == users
    code, out, _ = run(capsys, "report", "exp", "--store", db, "--metrics", config, *flags)
    assert code == 0 and f"{users} users" in out
    assert f"analysis window {iso_ms(window[0])} .. {iso_ms(window[1])}" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--start", "2024-05-01T00:00:00"], "--start: timestamp 2024-05-01T00:00:00 has no timezone"),
        (["--end", "2024-05-01"], "--end: timestamp 2024-05-01T00:00:00 has no timezone"),
        (["--end", "yesterday"], "--end: expected an ISO 8601 timestamp with a timezone"),
        (["--start", "-5"], "--start: epoch milliseconds must be >= 0, got -5"),
        (["--start", "1970-01-01T00:00:05Z", "--end", "1970-01-01T00:00:05Z"],
         "--end 1970-01-01T00:00:05.000Z is not after --start 1970-01-01T00:00:05.000Z"),
        (["--end", "1970-01-01T00:00:01Z"],
         "--end 1970-01-01T00:00:01.000Z is not after the start 1970-01-01T00:00:02.000Z "
         "(experiments.exp.start of "),
        (["--start", "1970-01-01T00:00:09Z"],
         "--start 1970-01-01T00:00:09.000Z is not before the end 1970-01-01T00:00:08.000Z "
         "(experiments.exp.end of "),
    ],
)  # fmt: skip
def test_report_window_flags_refuse_bad_values_in_one_line(
    tmp_path: Path, capsys, flags: list[str], message: str
) -> None:
    db, config = _windowed_store(tmp_path)
    code, _, err = run(capsys, "report", "exp", "--store", db, "--metrics", config, *flags)
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    # checked before the store is opened: a bad value is reported as such, not as the missing store
    missing = str(tmp_path / "none")
    code, _, err = run(capsys, "report", "exp", "--store", missing, "--metrics", config, *flags)
    assert code == 2 and err.startswith(f"error: {message}"), err
    assert not (tmp_path / "none").exists()


def test_report_help_explains_the_window_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--start TIME", "--end TIME"):
        assert flag in text
    assert "in place of the config's experiments.<key>.start" in text and "with a timezone" in text
