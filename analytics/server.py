"""HTTP server for the dashboard: the report JSON API and the static files of ``analytics/dashboard``.

Routes (GET, and HEAD for the same headers without the body; other methods get 405):

- ``/api/experiments``: a JSON list of ``ExperimentSummary`` (status, users per variant, SRM).
- ``/api/experiments/<key>/report``: the ``ExperimentReport`` of one experiment (404 if unknown).
- ``/healthz``: ``ok`` while the server answers (liveness, and the probes' readiness: the page is served, the
  waiting notice below included).
- ``/readyz``: ``ready`` once the store can be read; 503 with the one-line reason while it cannot (the
  consumer has not created it yet), for whoever needs reports, not just the page.
- ``/metrics``: Prometheus metrics of this server (``DashboardMetrics``: requests by route and status, time to
  compute a report or the experiment list when the cache misses, connections refused as busy, and each running
  experiment's users per variant and sample-ratio-mismatch check, see below).
- anything else: a file under the dashboard folder (``/`` is ``index.html``).

Given a ``StoreOpener`` instead of a store (``python -m analytics serve`` before the consumer has created
its store folder), the server starts at once and tries to open the store at start and on each request until it
opens, so a fresh deployment needs no restart: until then the API answers 503 ``{"error": <reason>, "waiting":
true}``, which the page shows as a notice.

Reports are cached for ``cache_seconds`` so a dashboard refreshing every few seconds in several tabs costs
one analysis per experiment and interval. The store is only read under one lock, so a store whose
connection is not safe for concurrent use is fine; answers already cached never wait for it (a report being
computed held up every page). The experiment list costs a fixed number of store queries, however many
experiment keys the events name (plus one per experiment the config gives an analysis window).

Every ``srm_interval_s`` (60 s by default, ``serve --srm-interval``) a thread of its own computes the summary
of every experiment (users per variant and SRM: no metric is read) and exports those whose config status is
``running`` as gauges (``SrmExporter``): a broken assignment raises MtrankExperimentSampleRatioMismatch
(deploy/observability/alerts.yml) without anyone opening a report. It reads the store in the same
one-at-a-time turn as the requests, so answers already cached never wait for it.

Facing untrusted clients: connections are served by a bounded pool of threads with an idle timeout (a client
that stops sending is dropped), and beyond a bounded queue new connections get 503 at once; odd paths (NUL
bytes, very long ones) are 400/414, never 500 (a report path may hold any character: the key is only looked up
among the experiments listed); errors never echo what the client sent; every response says
``X-Content-Type-Options: nosniff`` and carries the page's Content-Security-Policy (scripts, styles and
requests from this origin only, no frames, no ``<base>``); the ``Server`` header names no Python version.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from analytics import AnalyticsError
from analytics.metrics import AnalysisConfig, EventStore
from analytics.report import ExperimentSummary, build_report, experiment_summaries

logger = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_API_PREFIX = "/api/experiments"
MAX_PATH_CHARS = 2048
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
)


ROUTES = ("experiments", "report", "healthz", "readyz", "metrics", "api-other", "static", "invalid")
"""The ``route`` label of ``mtrank_dashboard_requests_total``: a fixed set, never the client's path."""

_BUILD_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StoreNotReady(AnalyticsError):
    """The store cannot be read yet (e.g. the consumer has not created it): one line, answered with 503."""


StoreOpener = Callable[[], EventStore]
"""Opens the store, or raises ``StoreNotReady`` while it cannot be read yet; called again on later requests."""


class DashboardMetrics:
    """The dashboard server's Prometheus metrics, on a registry of its own (served at ``/metrics`` on the
    dashboard's port): what an operator needs to see that analysts get answers, and how long a report takes
    to compute in the store (a cache miss), which grows with the events."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mtrank_dashboard_requests",
            "HTTP requests by route and status code",
            ["route", "code"],
            registry=self.registry,
        )
        self.build_seconds = Histogram(
            "mtrank_dashboard_report_build_seconds",
            "time to compute a report or the experiment list from the store (cache misses)",
            ["kind"],
            buckets=_BUILD_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.refused = Counter(
            "mtrank_dashboard_refused_connections",
            "connections answered 503 at once: every thread busy and the waiting queue full",
            registry=self.registry,
        )
        # the periodic check (SrmExporter): running experiments only, the series of others removed
        self.srm_p_value = Gauge(
            "mtrank_experiment_srm_p_value",
            "sample-ratio-mismatch p-value of a running A/B experiment (chi-square of its users per variant "
            "against the configured weights); absent while it cannot be tested (one variant, no users)",
            ["experiment"],
            registry=self.registry,
        )
        self.srm_flagged = Gauge(
            "mtrank_experiment_srm_flagged",
            "1 when a running A/B experiment's SRM p-value is below the analysis config's srm_threshold",
            ["experiment"],
            registry=self.registry,
        )
        self.experiment_users = Gauge(
            "mtrank_experiment_users",
            "users of a running experiment by the variant of their first exposure (in its analysis window)",
            ["experiment", "variant"],
            registry=self.registry,
        )
        self.summary_failures = Counter(
            "mtrank_experiment_summary_failures",
            "periodic experiment summaries that failed to read the store (the gauges keep their last values)",
            registry=self.registry,
        )


class ReportCache:
    """Builds reports and summaries from the store, at most once per ``ttl_s`` per key."""

    def __init__(
        self,
        store: EventStore | StoreOpener,
        config: AnalysisConfig,
        metrics: DashboardMetrics,
        ttl_s: float = 2.0,
    ) -> None:
        self._opener = store if callable(store) else None
        self._store = None if callable(store) else store
        self.config = config
        self.ttl_s = ttl_s
        self.metrics = metrics
        self._lock = threading.Lock()  # the entries: held only to read or write one
        self._build_lock = threading.Lock()  # the store's reads: one build at a time
        self._open_lock = threading.Lock()
        self._not_ready = ""  # the last reason the opener gave
        self._entries: dict[str, tuple[float, Any]] = {}

    @property
    def store(self) -> EventStore:
        """The store, opened on first use when an opener was given.

        Raises:
            StoreNotReady: the opener cannot open it yet.
        """
        if self._store is None:
            with self._open_lock:
                if self._store is None:
                    self._store = self._open()
        return self._store

    def _open(self) -> EventStore:
        """The opener's store; its reason for not opening yet is logged once per reason, not per request."""
        assert self._opener is not None
        try:
            store = self._opener()
        except StoreNotReady as exc:
            if str(exc) != self._not_ready:
                logger.warning("%s", exc)
                self._not_ready = str(exc)
            raise
        logger.info("the event store is open: serving reports")
        return store

    def not_ready(self) -> str | None:
        """Why the store cannot be read yet (``/readyz`` says it), or None: it is open."""
        try:
            self.store  # noqa: B018 - opens it
        except StoreNotReady as exc:
            return str(exc)
        return None

    def _fresh(self, key: str) -> tuple[bool, Any]:
        """(True, value) when ``key``'s entry is younger than ``ttl_s``, else (False, None)."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[0] < self.ttl_s:
            return True, entry[1]
        return False, None

    def _cached(
        self, key: str, kind: str, build: Callable[[], Any], exists: Callable[[], bool] = lambda: True
    ) -> Any:
        """``key``'s value, built at most once per ``ttl_s``: a request finding it cached returns at once, not
        after the build another request is waiting for (the store lock); one that waited for the build of
        the same key gets its value (looked up again under the store lock). None, not cached, when
        ``exists`` (a store read, so under the store lock too, and no build to time) says there is none."""
        found, value = self._fresh(key)
        if found:
            return value
        with self._build_lock:
            found, value = self._fresh(key)
            if found:
                return value
            if not exists():
                return None
            now = time.monotonic()
            with self.metrics.build_seconds.labels(kind).time():
                value = build()
            with self._lock:
                self._entries[key] = (now, value)
            return value

    def summaries(self) -> list[ExperimentSummary]:
        """Every experiment's summary, read now (not cached) in the store's turn: the periodic SRM check."""
        store = self.store
        with self._build_lock, self.metrics.build_seconds.labels("srm_check").time():
            return experiment_summaries(store, self.config)

    def experiments(self) -> list[dict[str, Any]]:
        store = self.store  # not in ``build``: a store not ready yet is no build to time
        return self._cached(
            "", "experiments", lambda: [s.to_dict() for s in experiment_summaries(store, self.config)]
        )

    def report(self, experiment_key: str) -> dict[str, Any] | None:
        """The report JSON, or None when the store has no such experiment (not cached: any client can ask for
        any key). Whether it has one is asked under the store lock as every read: asked before it, a report
        request read the store while another request's report was being computed from it."""
        store = self.store
        return self._cached(
            f"report:{experiment_key}",
            "report",
            lambda: build_report(store, self.config, experiment_key).to_dict(),
            lambda: experiment_key in store.experiments(),
        )


class SrmExporter:
    """Exports each running experiment's users per variant and SRM check every ``interval_s`` (the first
    ``interval_s`` after ``start``), in a thread of its own, into the gauges of ``DashboardMetrics``.

    Only experiments whose config status is ``running`` are exported, and the series of any other (stopped,
    or gone from the store) are removed after the values of the running ones are set: a scrape never misses
    the series of an experiment still running, which would reset its alert's ``for``. A store that fails a
    read is counted and logged, and the gauges keep their last values (an SRM alert firing goes on firing); a
    store not created yet is waited for, as the requests do.
    """

    def __init__(self, cache: ReportCache, interval_s: float, max_experiments: int = 200) -> None:
        self.cache = cache
        self.interval_s = interval_s
        self.max_experiments = max_experiments
        self._capped_at: int | None = None  # the running count last logged as over the cap (logged once)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._exported: dict[Gauge, set[tuple[str, ...]]] = {}  # the label values each gauge has series for

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="analytics-srm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop; a check reading the store finishes first (the caller closes the store next)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            self.refresh()

    def refresh(self) -> None:
        """Read every experiment's summary and export the running ones'."""
        metrics = self.cache.metrics
        try:
            summaries = self.cache.summaries()
        except StoreNotReady:  # logged by the opener, once per reason
            return
        except Exception as exc:  # noqa: BLE001 - a failed read must end neither the checks nor the server
            metrics.summary_failures.inc()
            logger.warning(
                "SRM check failed, the gauges keep their last values: %s: %s", type(exc).__name__, exc
            )
            return
        p_values: dict[tuple[str, ...], float] = {}
        flagged: dict[tuple[str, ...], float] = {}
        users: dict[tuple[str, ...], float] = {}
        for summary in self._largest_running(summaries):
            key = summary.experiment_key
            users |= {(key, variant.key): variant.users for variant in summary.variants}
            if summary.kind == "ab":  # an interleaving experiment has no split to check
                flagged[(key,)] = float(summary.srm.flagged)
                if summary.srm.p_value is not None:
                    p_values[(key,)] = summary.srm.p_value
        self._export(metrics.srm_p_value, p_values)
        self._export(metrics.srm_flagged, flagged)
        self._export(metrics.experiment_users, users)

    def _largest_running(self, summaries: list[ExperimentSummary]) -> list[ExperimentSummary]:
        """The running experiments with the most users, at most ``max_experiments``: experiment keys come from
        events, so a producer writing junk keys would otherwise add series without bound (logged once per
        count over the cap)."""
        running = sorted(
            (s for s in summaries if s.status == "running"), key=lambda s: (-s.total_users, s.experiment_key)
        )
        if len(running) > self.max_experiments and self._capped_at != len(running):
            logger.warning(
                "SRM check: %d running experiments, exporting the %d with the most users "
                "(--srm-max-experiments)",
                len(running),
                self.max_experiments,
            )
        self._capped_at = len(running) if len(running) > self.max_experiments else None
        return running[: self.max_experiments]

    def _export(self, gauge: Gauge, values: dict[tuple[str, ...], float]) -> None:
        """``gauge`` with exactly these series: set them, then remove the others it had."""
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        for labels in self._exported.get(gauge, set()) - values.keys():
            gauge.remove(*labels)
        self._exported[gauge] = set(values)


class _Handler(BaseHTTPRequestHandler):
    cache: ReportCache
    dashboard_dir: Path
    server_version = "mtrank-analytics"
    route = "invalid"  # until do_GET names it: http.server's own errors and other methods count here
    timeout = 10.0  # seconds a client may stay silent (socket timeout); set per server

    def version_string(self) -> str:
        return self.server_version  # http.server appends the Python version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        logger.debug("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (malformed request line, header too long...): plain text, no echo of input,
        # with a status line even when the request line was unreadable (http.server would then assume HTTP/0.9)
        self.close_connection = True
        self.request_version = "HTTP/1.0" if self.request_version == "HTTP/0.9" else self.request_version
        self._send(
            code, "text/plain; charset=utf-8", f"{code} {self.responses.get(code, ('error',))[0]}".encode()
        )

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self.do_GET()  # ``_send`` leaves the body out

    def _method_not_allowed(self) -> None:
        # http.server answers methods without a do_* handler 501 Not Implemented, as if the server were broken
        self.route = "invalid"
        self.close_connection = True  # the request body, if any, is never read
        self._send_json(405, {"error": "the API is read-only: use GET"}, (("Allow", "GET, HEAD"),))

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _method_not_allowed

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self.route = "invalid"
        if len(self.path) > MAX_PATH_CHARS:
            self._send_json(414, {"error": f"the path is longer than {MAX_PATH_CHARS} characters"})
            return
        path = unquote(urlsplit(self.path).path)
        route = _route_of(path)
        # a report path's are part of an experiment key (events name experiments), which is only looked up
        if route != "report" and any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            self._send_json(400, {"error": "the path contains control characters"})
            return
        self.route = route
        try:
            if self.route == "healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok")
            elif self.route == "readyz":
                reason = self.cache.not_ready()
                self._send(503 if reason else 200, "text/plain; charset=utf-8", (reason or "ready").encode())
            elif self.route == "metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.cache.metrics.registry))
            elif self.route == "experiments":
                self._send_json(200, self.cache.experiments())
            elif self.route == "report":
                key = path[len(_API_PREFIX) + 1 : -len("/report")]
                report = self.cache.report(key)
                if report is None:
                    self._send_json(404, {"error": "unknown experiment; GET /api/experiments lists them"})
                else:
                    self._send_json(200, report)
            elif self.route == "api-other":
                self._send_json(404, {"error": "no such endpoint"})
            else:
                self._send_file(path)
        except StoreNotReady as exc:  # the reason names the operator's store, nothing the client sent
            self._send_json(503, {"error": str(exc), "waiting": True})
        except (ConnectionError, TimeoutError):  # the client left or stalled mid-answer: nothing to tell it
            logger.debug("client %s went away while %r was sent", self.address_string(), path[:200])
            self.close_connection = True
        except Exception:
            logger.exception("error serving %r", path[:200])
            self._send_json(500, {"error": "internal error, see the server log"})

    def _send_file(self, path: str) -> None:
        root = self.dashboard_dir.resolve()
        try:
            file = (root / ("index.html" if path in ("", "/") else path.lstrip("/"))).resolve()
            found = file.is_relative_to(root) and file.is_file()
        except (OSError, ValueError):  # a name too long for the file system, ...
            found = False
        if not found:
            self._send(404, "text/plain; charset=utf-8", b"not found")
            return
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self._send(200, ctype, file.read_bytes())

    def _send_json(self, code: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(code, "application/json", json.dumps(body, allow_nan=False).encode(), headers)

    def _send(self, code: int, ctype: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.cache.metrics.requests.labels(self.route, str(code)).inc()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in _SECURITY_HEADERS + headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _route_of(path: str) -> str:
    """The ``route`` label of ``path`` (one of ``ROUTES``)."""
    if path in ("/healthz", "/readyz"):
        return path[1:]
    if path == "/metrics":
        return "metrics"
    if path in (_API_PREFIX, _API_PREFIX + "/"):
        return "experiments"
    if path.startswith(_API_PREFIX + "/") and path.endswith("/report"):
        return "report"
    return "api-other" if path.startswith("/api/") else "static"


class _BoundedHTTPServer(HTTPServer):
    """An HTTPServer whose connections are handled by ``threads`` pooled threads; at most ``backlog``
    connections wait for one, beyond that a connection is answered 503 and closed at once."""

    request_queue_size = 128  # the kernel's accept queue: a burst is accepted (and answered), not left hanging

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        threads: int,
        backlog: int,
        refused: Counter,
    ):
        # before binding: a failed bind calls server_close, which shuts the pool down
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="analytics-http")
        super().__init__(address, handler)
        self._limit = threads + backlog
        self._refused = refused
        self._open = 0
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            admitted = self._open < self._limit
            if admitted:
                self._open += 1
        if not admitted:
            self._refused.inc()
            _refuse(request)
            self.shutdown_request(request)
            return
        self._pool.submit(self._handle, request, client_address)

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one connection's failure is logged, never fatal for the server
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._open_lock:
                self._open -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed", client_address, exc_info=True)  # timeouts, resets

    def server_close(self) -> None:
        """Close the socket, then answer the connections accepted (one request each, bounded by the idle
        timeout): the caller closes the store next, which failed the reports being computed with 500."""
        super().server_close()
        self._pool.shutdown(wait=True)


def _refuse(request: socket.socket) -> None:
    body = b"503 busy, retry later"
    head = f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    try:
        request.settimeout(1.0)
        request.sendall(head.encode() + b"Retry-After: 1\r\nConnection: close\r\n\r\n" + body)
    except OSError:
        pass


class AnalyticsServer:
    """The dashboard server in a background thread.

    Args:
        store: event store to read, or a ``StoreOpener`` retried on requests until the store can be read.
        config: analysis config (metrics, alpha, correction, per-experiment control and weights).
        host: interface to bind.
        port: port to bind; 0 picks a free one (see ``port`` after ``start``).
        dashboard_dir: folder of the static dashboard files.
        cache_seconds: how long a computed report is reused.
        threads: connections handled at once.
        backlog: connections waiting for a thread; more get 503 at once.
        idle_timeout_s: a client silent this long (mid-request or while reading the answer) is dropped.
        srm_interval_s: seconds between the exports of the running experiments' SRM checks (``SrmExporter``).
        srm_max_experiments: the running experiments those exports cover at most (those with the most users).
    """

    def __init__(
        self,
        store: EventStore | StoreOpener,
        config: AnalysisConfig,
        host: str = "127.0.0.1",
        port: int = 8080,
        dashboard_dir: Path = DASHBOARD_DIR,
        cache_seconds: float = 2.0,
        threads: int = 16,
        backlog: int = 64,
        idle_timeout_s: float = 10.0,
        srm_interval_s: float = 60.0,
        srm_max_experiments: int = 200,
    ) -> None:
        self.metrics = DashboardMetrics()
        self._cache = ReportCache(store, config, self.metrics, cache_seconds)
        self._srm = SrmExporter(self._cache, srm_interval_s, srm_max_experiments)
        handler = type(
            "Handler",
            (_Handler,),
            {
                "cache": self._cache,
                "dashboard_dir": dashboard_dir,
                "timeout": idle_timeout_s,
            },
        )
        self._httpd = _BoundedHTTPServer((host, port), handler, threads, backlog, self.metrics.refused)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        if not isinstance(host, str):  # getsockname() gives an AF_INET host as str (bytes go only into bind)
            raise TypeError(f"unexpected server address {self._httpd.server_address!r}")
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="analytics-http", daemon=True)
        self._thread.start()
        logger.info("analytics dashboard at %s", self.url)
        self._cache.not_ready()  # opens the store now, or logs why it cannot yet: at start, not on a first visit
        self._srm.start()

    def stop(self) -> None:
        """Stop serving and the SRM checks, close the socket and answer the connections already accepted."""
        self._srm.stop()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> AnalyticsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
