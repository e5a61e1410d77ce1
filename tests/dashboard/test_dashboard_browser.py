"""The dashboard in a real headless chromium: the numbers a person reads equal the JSON report.

Saves a screenshot to test-artifacts/dashboard.png.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "analytics" / "dashboard"
FIXTURE = Path(__file__).parent / "fixtures" / "report.json"
ARTIFACTS = ROOT / "test-artifacts"


# ---------------------------------------------------------------- reading displayed numbers


@dataclass(frozen=True)
class Shown:
    """A number as displayed: its value and half a unit of the last digit shown."""

    value: float
    tolerance: float
    below: float | None = None  # for texts like "<0.0001"

    def matches(self, expected: float) -> bool:
        if self.below is not None:
            return expected < self.below
        return math.isclose(self.value, expected, rel_tol=0, abs_tol=self.tolerance * (1 + 1e-9) + 1e-12)


_NUMBER = re.compile(r"^(<?)([+\-\u2212]?)([\d,]*)(?:\.(\d+))?(%?)$")


def shown_number(text: str) -> Shown:
    """Parse '+4.55%', '0.0071', '<0.0001', '10,234' or '412.4' into a Shown."""
    match = _NUMBER.match(text.strip())
    if not match or not (match.group(3) or match.group(4)):
        raise ValueError(f"not a displayed number: {text!r}")
    less, sign, whole, frac, pct = match.groups()
    frac = frac or ""
    magnitude = float((whole.replace(",", "") or "0") + (f".{frac}" if frac else ""))
    scale = 0.01 if pct else 1.0
    value = (-magnitude if sign in ("-", "\u2212") else magnitude) * scale
    if less:
        return Shown(value, 0.0, below=value)
    return Shown(value, 0.5 * 10 ** (-len(frac)) * scale)


@pytest.mark.parametrize(
    ("text", "expected", "ok"),
    [
        ("+4.55%", 0.045514, True),
        ("+4.55%", 0.04556, False),
        ("-0.62%", -0.006208, True),
        ("0.0071", 0.00712, True),
        ("0.0071", 0.00716, False),
        ("<0.0001", 0.000013, True),
        ("<0.0001", 0.0002, False),
        ("10,234", 10234, True),
        ("10,234", 10235, False),
        ("412.4", 412.37, True),
    ],
)
def test_shown_number_tolerance_is_the_last_digit(text: str, expected: float, ok: bool) -> None:
    assert shown_number(text).matches(expected) is ok


# ---------------------------------------------------------------- servers


class _FixtureHandler(BaseHTTPRequestHandler):
    """Serves the dashboard files and the fixture JSON the way analytics.server does."""

    fixture: dict

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = urlsplit(self.path).path
        if path == "/api/experiments":
            return self._send(200, "application/json", json.dumps(self.fixture["experiments"]).encode())
        match = re.fullmatch(r"/api/experiments/([^/]+)/report", path)
        if match:
            report = self.fixture["reports"].get(match.group(1))
            if report is None:
                return self._send(404, "application/json", b'{"error": "unknown experiment"}')
            return self._send(200, "application/json", json.dumps(report).encode())
        name = "index.html" if path in ("/", "") else path.lstrip("/")
        file = (DASHBOARD / name).resolve()
        if file.parent != DASHBOARD or not file.is_file():
            return self._send(404, "text/plain", b"not found")
        types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
        return self._send(200, types.get(file.suffix, "application/octet-stream"), file.read_bytes())

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def dashboard_url():
    handler = type("Handler", (_FixtureHandler,), {"fixture": json.loads(FIXTURE.read_text())})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


# ---------------------------------------------------------------- browser helpers


def _wait(chromium, predicate, timeout: float = 15.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(chromium, timeout, poll_frequency=0.05).until(lambda d: predicate(d))


def _open(chromium, url: str) -> None:
    chromium.get(url)
    _wait(chromium, lambda d: int(d.find_element("tag name", "body").get_attribute("data-loaded") or 0) >= 1)


def _show_experiment(chromium, key: str) -> None:
    chromium.find_element("css selector", f'tr[data-experiment="{key}"]').click()
    _wait(
        chromium,
        lambda d: (
            d.find_element("id", "report").get_attribute("data-experiment") == key
            and d.find_element("id", "report").is_displayed()
        ),
    )


def _field(row, name: str) -> str:
    return row.find_element("css selector", f'[data-field="{name}"]').text


def _assert_shows(text: str, expected: float, where: str) -> None:
    assert shown_number(text).matches(expected), (
        f"{where}: dashboard shows {text!r}, report says {expected!r}"
    )


def _experiments(body: dict | list) -> list[dict]:
    return body if isinstance(body, list) else body["experiments"]


def _lift(row: dict, difference_type: str) -> dict:
    return row["absolute_lift" if difference_type == "absolute" else "relative_lift"]


# ---------------------------------------------------------------- tests


def test_dashboard_shows_the_report_numbers(chromium, dashboard_url: str) -> None:
    listing = _experiments(_get_json(f"{dashboard_url}/api/experiments"))
    assert listing, "the server lists no experiments"
    _open(chromium, dashboard_url + "/")

    for exp in listing:
        key = exp["experiment_key"]
        row = chromium.find_element("css selector", f'tr[data-experiment="{key}"]')
        _assert_shows(_field(row, "total_users"), exp["total_users"], f"{key} total users")
        for variant in exp["variants"]:
            chip = row.find_element("css selector", f'[data-variant="{variant["key"]}"] [data-field="users"]')
            _assert_shows(chip.text, variant["users"], f"{key} users[{variant['key']}]")
        srm = _field(row, "srm")
        assert srm.startswith("⚠ SRM") is bool(exp["srm"]["flagged"]), srm
        _assert_shows(srm.split(" p")[1].lstrip("="), exp["srm"]["p_value"], f"{key} SRM p-value")

    for exp in listing:
        key = exp["experiment_key"]
        report = _get_json(f"{dashboard_url}/api/experiments/{quote(key)}/report")
        _show_experiment(chromium, key)
        difference_type = report["difference_type"]
        assert chromium.find_element("id", "srm-banner").is_displayed() is bool(report["srm"]["flagged"])
        compared = 0
        for metric in report["metrics"]:
            for value in metric["variants"]:
                where = f"{key}/{metric['name']}/{value['variant']}"
                row = chromium.find_element(
                    "css selector",
                    f'#metrics tr[data-metric="{metric["name"]}"][data-variant="{value["variant"]}"]',
                )
                _assert_shows(_field(row, "users"), value["users"], f"{where} users")
                _assert_shows(_field(row, "value"), value["value"], f"{where} value")
                lift = None if value["is_control"] else _lift(value, difference_type)
                if lift is None or value["error"]:
                    assert not row.find_elements("css selector", '[data-field="lift"]'), where
                    continue
                _assert_shows(_field(row, "lift"), lift["estimate"], f"{where} lift")
                _assert_shows(_field(row, "ci_low"), lift["ci"][0], f"{where} CI low")
                _assert_shows(_field(row, "ci_high"), lift["ci"][1], f"{where} CI high")
                _assert_shows(_field(row, "p_value"), value["p_value"], f"{where} p-value")
                _assert_shows(
                    _field(row, "adjusted_p_value"), value["adjusted_p_value"], f"{where} adjusted p"
                )
                badge = row.find_element("css selector", '[data-field="significant"]')
                assert badge.get_attribute("data-significant") == str(bool(value["significant"])).lower(), (
                    where
                )
                assert row.find_elements("css selector", "svg.ci-bar rect.interval"), f"{where}: no CI bar"
                if report["sequential"]:
                    half_width = (lift["ci"][1] - lift["ci"][0]) / 2
                    _assert_shows(_field(row, "boundary"), half_width, f"{where} sequential boundary")
                compared += 1
        assert compared > 0, f"{key}: no variant was compared with control"

        treatments = [v["key"] for v in report["variants"] if not v["is_control"]]
        shown_metric = chromium.find_element("id", "lift-metric").get_attribute("value")
        assert shown_metric in {m["name"] for m in report["metrics"]}
        lift_lines = chromium.find_elements("css selector", "#lift-chart polyline")
        assert [line.get_attribute("data-series").split(" vs ")[0] for line in lift_lines] == treatments
        for line, variant in zip(lift_lines, treatments, strict=True):
            points = [
                p
                for p in report["timeline"]
                if p["metric"] == shown_metric and p["variant"] == variant and p["estimate"] is not None
            ]
            assert len(line.get_attribute("points").split()) == len(points)
        traffic_lines = chromium.find_elements("css selector", "#traffic-chart polyline")
        assert [line.get_attribute("data-series") for line in traffic_lines] == [
            v["key"] for v in report["variants"]
        ]
        for line, variant in zip(traffic_lines, report["variants"], strict=True):
            points = [p for p in report["traffic"] if p["variant"] == variant["key"]]
            assert len(line.get_attribute("points").split()) == len(points)

    errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"browser console errors: {errors}"
    origins = chromium.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
    )
    assert set(origins) <= {dashboard_url}, f"dashboard fetched from outside its origin: {set(origins)}"


def test_dashboard_screenshot(chromium, dashboard_url: str) -> None:
    """dashboard.png shows the first experiment; dashboard-<key>.png each one."""
    listing = _experiments(_get_json(f"{dashboard_url}/api/experiments"))
    ARTIFACTS.mkdir(exist_ok=True)
    for i, exp in enumerate(listing):
        key = exp["experiment_key"]
        _open(chromium, f"{dashboard_url}/#/{quote(key)}")
        _wait(
            chromium,
            lambda d, key=key: d.find_element("id", "report").get_attribute("data-experiment") == key,
        )
        height = (
            int(
                chromium.execute_script(
                    "return document.querySelector('footer').getBoundingClientRect().bottom"
                )
            )
            + 12
        )
        shot = chromium.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": 1440, "height": height, "scale": 1},
            },
        )
        png = base64.b64decode(shot["data"])
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        for target in [ARTIFACTS / f"dashboard-{key}.png"] + (
            [ARTIFACTS / "dashboard.png"] if i == 0 else []
        ):
            target.write_bytes(png)


def test_dashboard_refreshes_by_itself(chromium, dashboard_url: str) -> None:
    _open(chromium, f"{dashboard_url}/?refresh=1")
    loads = int(chromium.find_element("tag name", "body").get_attribute("data-loaded"))
    _wait(
        chromium,
        lambda d: int(d.find_element("tag name", "body").get_attribute("data-loaded")) >= loads + 2,
        10,
    )


def test_fixture_follows_the_report_schema() -> None:
    """The fixture keeps the exact field names of analytics.report's dataclasses."""
    from dataclasses import fields

    from analytics import report as schema

    def names(cls: type) -> set[str]:
        return {f.name for f in fields(cls)}

    fixture = json.loads(FIXTURE.read_text())
    for summary in fixture["experiments"]:
        assert set(summary) == names(schema.ExperimentSummary)
        assert all(set(v) == names(schema.VariantSummary) for v in summary["variants"])
        assert set(summary["srm"]) == names(schema.SrmResult)
    for report in fixture["reports"].values():
        assert set(report) == names(schema.ExperimentReport)
        for metric in report["metrics"]:
            assert set(metric) == names(schema.MetricReport)
            for row in metric["variants"]:
                assert set(row) == names(schema.VariantMetricResult)
                for lift in (row["absolute_lift"], row["relative_lift"]):
                    assert lift is None or set(lift) == names(schema.Lift)
        assert all(set(p) == names(schema.TimelinePoint) for p in report["timeline"])
        assert all(set(p) == names(schema.TrafficPoint) for p in report["traffic"])
