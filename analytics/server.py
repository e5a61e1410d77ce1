"""HTTP server for the dashboard: the report JSON API and the static files of ``analytics/dashboard``.

Routes (GET only):

- ``/api/experiments``: a JSON list of ``ExperimentSummary`` (status, users per variant, SRM).
- ``/api/experiments/<key>/report``: the ``ExperimentReport`` of one experiment (404 if unknown).
- ``/healthz``: ``ok``.
- anything else: a file under the dashboard folder (``/`` is ``index.html``).

Reports are cached for ``cache_seconds`` so a dashboard refreshing every few seconds in several tabs costs
one analysis per experiment and interval. The store is only read under one lock, so a store whose
connection is not safe for concurrent use is fine.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from analytics.metrics import AnalysisConfig, EventStore
from analytics.report import build_report, experiment_summary

logger = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_API_PREFIX = "/api/experiments"


class ReportCache:
    """Builds reports and summaries from the store, at most once per ``ttl_s`` per key."""

    def __init__(self, store: EventStore, config: AnalysisConfig, ttl_s: float = 2.0) -> None:
        self.store = store
        self.config = config
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Any]] = {}

    def _cached(self, key: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            now = time.monotonic()
            if entry is not None and now - entry[0] < self.ttl_s:
                return entry[1]
            value = build()
            self._entries[key] = (now, value)
            return value

    def experiments(self) -> list[dict[str, Any]]:
        return self._cached(
            "",
            lambda: [
                experiment_summary(self.store, self.config, key).to_dict() for key in self.store.experiments()
            ],
        )

    def report(self, experiment_key: str) -> dict[str, Any] | None:
        """The report JSON, or None when the store has no such experiment."""
        if experiment_key not in self.store.experiments():
            return None
        return self._cached(
            f"report:{experiment_key}",
            lambda: build_report(self.store, self.config, experiment_key).to_dict(),
        )


class _Handler(BaseHTTPRequestHandler):
    cache: ReportCache
    dashboard_dir: Path
    server_version = "mtrank-analytics"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = unquote(urlsplit(self.path).path)
        try:
            if path == "/healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok")
            elif path in (_API_PREFIX, _API_PREFIX + "/"):
                self._send_json(200, self.cache.experiments())
            elif path.startswith(_API_PREFIX + "/") and path.endswith("/report"):
                key = path[len(_API_PREFIX) + 1 : -len("/report")]
                report = self.cache.report(key)
                if report is None:
                    self._send_json(404, {"error": f"unknown experiment {key!r}"})
                else:
                    self._send_json(200, report)
            elif path.startswith("/api/"):
                self._send_json(404, {"error": f"no such endpoint {path}"})
            else:
                self._send_file(path)
        except Exception:
            logger.exception("error serving %s", path)
            self._send_json(500, {"error": "internal error, see the server log"})

    def _send_file(self, path: str) -> None:
        root = self.dashboard_dir.resolve()
        file = (root / ("index.html" if path in ("", "/") else path.lstrip("/"))).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            self._send(404, "text/plain; charset=utf-8", b"not found")
            return
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self._send(200, ctype, file.read_bytes())

    def _send_json(self, code: int, body: Any) -> None:
        self._send(code, "application/json", json.dumps(body, allow_nan=False).encode())

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class AnalyticsServer:
    """The dashboard server in a background thread.

    Args:
        store: event store to read.
        config: analysis config (metrics, alpha, correction, per-experiment control and weights).
        host: interface to bind.
        port: port to bind; 0 picks a free one (see ``port`` after ``start``).
        dashboard_dir: folder of the static dashboard files.
        cache_seconds: how long a computed report is reused.
    """

    def __init__(
        self,
        store: EventStore,
        config: AnalysisConfig,
        host: str = "127.0.0.1",
        port: int = 8080,
        dashboard_dir: Path = DASHBOARD_DIR,
        cache_seconds: float = 2.0,
    ) -> None:
        handler = type(
            "Handler",
            (_Handler,),
            {"cache": ReportCache(store, config, cache_seconds), "dashboard_dir": dashboard_dir},
        )
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="analytics-http", daemon=True)
        self._thread.start()
        logger.info("analytics dashboard at %s", self.url)

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        logger.info("analytics dashboard at %s", self.url)
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket."""
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
