"""The dashboard HTTP server on a free port, called over real HTTP."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from analytics.metrics import load_analysis_config
from analytics.report import build_report
from analytics.server import AnalyticsServer
from analytics.store import ExposureRow, MemoryEventStore, open_store
from proto.limits import MAX_NAME_BYTES
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


def _raw(server: AnalyticsServer, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` as is and read the whole answer (urllib would normalise odd paths)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (b"/%00", 400),
        (b"/api/experiments/%00/report", 404),  # an experiment key may hold one (events name experiments)
        (b"/%0d%0aSet-Cookie:x=1", 400),
        (b"/" + b"a" * 8192, 414),
        (b"/" + b"a" * 2000, 404),  # a file name too long for the file system: not found
        (b"/api/experiments/" + b"x" * 1500 + b"/report", 404),
    ],
)
def test_odd_paths_get_a_client_error_never_500(served, path: bytes, status: int) -> None:
    server, _ = served
    answer = _raw(server, b"GET " + path + b" HTTP/1.0\r\n\r\n")
    assert answer.startswith(f"HTTP/1.0 {status} ".encode()), answer[:80]


def test_head_is_get_without_the_body_and_other_methods_get_405(
    served: tuple[AnalyticsServer, MemoryEventStore],
) -> None:
    """HEAD (curl -I, link checkers) and POST used to get 501 Not Implemented, a server fault."""
    server, _ = served
    for path in (b"/api/experiments", b"/api/experiments/ranking-dml/report", b"/healthz", b"/"):
        head, _, body = _raw(server, b"HEAD " + path + b" HTTP/1.0\r\n\r\n").partition(b"\r\n\r\n")
        get_head, _, get_body = _raw(server, b"GET " + path + b" HTTP/1.0\r\n\r\n").partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 ") and body == b"", (path, head[:80])
        assert f"Content-Length: {len(get_body)}".encode() in head.split(b"\r\n")
    missing = _raw(server, b"HEAD /api/experiments/missing/report HTTP/1.0\r\n\r\n")
    head, _, body = missing.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 404 ") and body == b""
    for method in (b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"):
        request = method + b" /api/experiments/ranking-dml/report HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}"
        head, _, body = _raw(server, request).partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.0 405 ") and b"Allow: GET, HEAD" in lines, (method, head[:80])
        assert b"Content-Type: application/json" in lines and "use GET" in json.loads(body)["error"]


def test_headers_and_errors_reveal_nothing(served) -> None:
    server, _ = served
    answer = _raw(server, b"GET /api/experiments/%3Cscript%3Ealert(1)%3C%2Fscript%3E/report HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 404 ") and b"script" not in body and b"alert" not in body
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Content-Type"] == "application/json"
    assert headers["Server"] == "mtrank-analytics" and "Python" not in head.decode()
    garbage = _raw(server, b"\x16\x03\x01\x02\x00 nonsense\r\n\r\n")  # a TLS hello, say
    assert garbage.startswith(b"HTTP/1.0 400 ") and b"nonsense" not in garbage and b"Python" not in garbage


def test_slow_clients_hold_a_bounded_number_of_threads_for_a_bounded_time() -> None:
    store = MemoryEventStore()
    with AnalyticsServer(
        store, load_analysis_config(EXAMPLE), port=0, threads=4, backlog=4, idle_timeout_s=1.0
    ) as server:
        before = threading.active_count()
        slow = []
        for _ in range(60):  # half-sent requests that never finish
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        try:
            time.sleep(0.3)
            assert threading.active_count() - before <= 4 + 1, "one thread per slow client"
            refused, waiting = 0, list(slow)
            deadline = time.monotonic() + 3
            while waiting and time.monotonic() < deadline:  # beyond threads + backlog: 503 at once
                sock = waiting.pop(0)
                sock.settimeout(0.01)
                try:
                    refused += sock.recv(64).startswith(b"HTTP/1.0 503")
                except TimeoutError:
                    waiting.append(sock)
                assert threading.active_count() - before <= 4 + 1
            assert refused >= 60 - 8, refused
            refused_total = server.metrics.registry.get_sample_value(
                "mtrank_dashboard_refused_connections_total"
            )
            assert refused_total == 60 - 8  # every connection beyond threads + backlog
            deadline = time.monotonic() + 10  # once the idle timeout dropped the slow ones, service resumes
            while True:
                try:
                    if get(server, "/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the dashboard never recovered from the slow clients"
                time.sleep(0.2)
        finally:
            for sock in slow:
                sock.close()


def test_clients_that_leave_early_log_no_traceback(served, caplog: pytest.LogCaptureFixture) -> None:
    server, _ = served
    with caplog.at_level(logging.DEBUG, logger="analytics.server"):
        for _ in range(20):  # half-sent requests dropped at once: the answer finds the socket closed
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /api/experiments HTTP/1.1\r\nHost: x\r\n")
            sock.close()
        time.sleep(0.5)
        assert get(server, "/healthz")[0] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def _sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text page (0 when it is not there)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_count_requests_by_route_and_report_builds_on_cache_misses() -> None:
    """/metrics on the dashboard's port: requests by route (never the client's path) and status, and the time
    reports take to compute, once per cache miss."""
    store = MemoryEventStore()
    simulate_experiment(store, "ranking-dml", users=200, seed=3, variants=("control", "dml"))
    with AnalyticsServer(store, load_analysis_config(EXAMPLE), port=0, cache_seconds=60) as server:
        for path in ("/api/experiments/ranking-dml/report",) * 2 + ("/api/experiments/nope/report", "/x%00"):
            get(server, path)
        get(server, "/no/such/file-" + "z" * 40)
        status, ctype, body = get(server, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    text = body.decode()
    assert _sample(text, "mtrank_dashboard_requests_total", route="report", code="200") == 2
    assert _sample(text, "mtrank_dashboard_requests_total", route="report", code="404") == 1
    assert _sample(text, "mtrank_dashboard_requests_total", route="invalid", code="400") == 1
    assert _sample(text, "mtrank_dashboard_requests_total", route="static", code="404") == 1
    assert "file-zzz" not in text
    assert _sample(text, "mtrank_dashboard_report_build_seconds_count", kind="report") == 1  # then cached


def test_every_response_carries_the_content_security_policy(served) -> None:
    """The page's policy was only a <meta> tag in index.html: the JSON, the scripts and every error answer had
    none, and a <meta> policy cannot forbid framing (frame-ancestors) at all."""
    server, _ = served
    for path in ("/", "/app.js", "/api/experiments", "/api/experiments/missing/report", "/nothing", "/%00"):
        head = _raw(server, f"GET {path} HTTP/1.0\r\n\r\n".encode()).partition(b"\r\n\r\n")[0].decode()
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
        policy = dict(p.strip().split(" ", 1) for p in headers["Content-Security-Policy"].split(";"))
        assert policy["script-src"] == "'self'" and policy["default-src"] == "'self'", path
        assert policy["frame-ancestors"] == policy["base-uri"] == policy["object-src"] == "'none'", path


def test_one_exposure_with_a_huge_experiment_key_leaves_the_list_working() -> None:
    """Any producer writes exposure events. With ClickHouse one exposure whose experiment key had 300,000
    characters answered /api/experiments 500 (the key went into every query, beyond ClickHouse's 256 KiB
    max_query_size). A key with a control character was listed but its report path was refused (400): the
    page, showing the first experiment listed, showed only that error."""
    longest, odd = "😀" * (MAX_NAME_BYTES // 4), "\x01\r\n"
    with (
        open_store("chdb://") as store,
        AnalyticsServer(store, load_analysis_config(EXAMPLE), port=0) as server,
    ):
        simulate_experiment(store, "ranking-dml", users=200, seed=3, variants=("control", "dml"))
        keys = ("x" * 300_000, longest, odd)
        store.apply([ExposureRow(f"e{i}", key, "a", "u", 1) for i, key in enumerate(keys)], [], {})
        status, _, body = get(server, "/api/experiments")
        assert status == 200, body[:200]
        assert [e["experiment_key"] for e in json.loads(body)] == [odd, "ranking-dml", longest]
        for key in (longest, odd):
            status, _, body = get(server, f"/api/experiments/{quote(key, safe='')}/report")
            assert status == 200 and json.loads(body)["experiment_key"] == key
