"""The dashboard in a real headless chromium against the real analytics server: the numbers a person reads
equal the JSON report the server returns.

Five stores: the end-to-end demo's own (a shrunk run of the README's main command) and the interleaving demo's
(`--interleaving`, shrunk), and three filled with generated exposures and outcomes through the store's own `apply`
(the path the Kafka consumer takes) with the analysis config deploy/ ships, one of them with interleaving
experiments. Saves test-artifacts/dashboard.png of the demo's experiments (and one dashboard-<experiment>.png per
experiment of both demos).
"""

from __future__ import annotations

import base64
import json
import math
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from analytics import text_format
from analytics.metrics import AnalysisConfig, load_analysis_config
from analytics.server import AnalyticsServer
from analytics.store import DuckDBEventStore, EventStore, ExposureRow, OutcomeRow
from analytics.store.base import InterleavedRow
from tests.analytics.simulated_interleaving import ARMS, simulate_interleaving
from tests.analytics.stats.simulated_events import simulate_experiment

ROOT = Path(__file__).resolve().parents[2]
ANALYSIS_CONFIG = ROOT / "deploy" / "config" / "analysis.yaml"
ARTIFACTS = ROOT / "test-artifacts"
START_MS = 1_795_000_000_000
DAY_MS = 86_400_000


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
        if expected != 0 and (self.value == 0 or (self.value > 0) != (expected > 0)):
            return False  # "+0.00%" for a CI end of +0.0004% reads as an interval that reaches zero
        return math.isclose(self.value, expected, rel_tol=0, abs_tol=self.tolerance * (1 + 1e-9))


_NUMBER = re.compile(r"^(<?)([+\-\u2212]?)([\d,]*)(?:\.(\d+))?(?:e([+\-]?\d+))?(%?)$")


def shown_number(text: str) -> Shown:
    """Parse '+4.55%', '0.0071', '<0.0001', '10,234', '412.4' or '-2.972e-9' into a Shown."""
    match = _NUMBER.match(text.strip())
    if not match or not (match.group(3) or match.group(4)):
        raise ValueError(f"not a displayed number: {text!r}")
    less, sign, whole, frac, exponent, pct = match.groups()
    frac = frac or ""
    magnitude = float((whole.replace(",", "") or "0") + (f".{frac}" if frac else ""))
    scale = (0.01 if pct else 1.0) * 10.0 ** int(exponent or 0)
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
        ("-2.972e-9", -2.9723e-9, True),
        ("-2.972e-9", -2.9727e-9, False),
        ("+1.500e-5", 1.5e-5, True),
        ("+0.00%", 0.000004, False),
        ("-0.00%", -0.00001, False),
        ("+0.00040%", 0.000004, True),
        ("-0.0010%", -0.00001, True),
        ("0", 0.0, True),
    ],
)
def test_shown_number_tolerance_is_the_last_digit(text: str, expected: float, ok: bool) -> None:
    assert shown_number(text).matches(expected) is ok


# ---------------------------------------------------------------- generated events and the real server


def generate_events(
    store: EventStore,
    experiment_key: str,
    users: int,
    seed: int,
    shares: tuple[float, float] = (0.5, 0.5),
    click_prob: tuple[float, float] = (0.10, 0.12),
    rating_mean: tuple[float, float] = (3.5, 3.5),
    days: int = 7,
    first_user: int = 0,
) -> None:
    """Users exposed over ``days`` to control or treatment; per user impressions, clicks and a rating."""
    rng = np.random.default_rng(seed)
    variants = ("control", "treatment")
    arm = rng.choice(2, size=users, p=shares)
    exposed = START_MS + np.sort(rng.integers(0, days * DAY_MS, size=users))
    exposures, outcomes = [], []
    for i in range(users):
        user, v, t = f"{experiment_key}-{first_user + i:06d}", int(arm[i]), int(exposed[i])
        exposures.append(ExposureRow(f"{user}-x", experiment_key, variants[v], user, t))
        impressions = int(rng.poisson(4)) + 1
        clicks = int(rng.binomial(impressions, click_prob[v]))
        outcomes += [
            OutcomeRow(f"{user}-i{k}", user, "impression", t + 10 + k, 1.0) for k in range(impressions)
        ]
        outcomes += [OutcomeRow(f"{user}-c{k}", user, "click", t + 500 + k, 1.0) for k in range(clicks)]
        if clicks:
            rating = float(np.clip(rng.normal(rating_mean[v], 1.0), 1.0, 5.0))
            outcomes.append(OutcomeRow(f"{user}-r", user, "rating", t + 900, rating))
    store.apply(exposures, outcomes, {})


@dataclass
class Served:
    url: str
    store: EventStore


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The two experiments of deploy/config (one per stage), sequential analysis on, no SRM."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    generate_events(store, "ranking-mmoe-dml", users=1500, seed=1, click_prob=(0.10, 0.14))
    generate_events(
        store, "retrieval-ssmtl", users=1500, seed=2, click_prob=(0.11, 0.11), rating_mean=(3.4, 3.6)
    )
    config = load_analysis_config(ANALYSIS_CONFIG)
    with store, AnalyticsServer(store, config, port=0, cache_seconds=2.0) as server:
        yield Served(server.url, store)


@pytest.fixture(scope="module")
def real_demo(demo_run: dict) -> Iterator[Served]:
    """The store the end-to-end demo filled through Kafka, with the demo's own analysis config."""
    store = DuckDBEventStore(str(demo_run["workdir"] / "events"))
    with store, AnalyticsServer(store, load_analysis_config(demo_run["metrics"]), port=0) as server:
        yield Served(server.url, store)


@pytest.fixture(scope="module")
def srm_absolute(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A traffic split far from the configured 50/50 (SRM flagged), absolute lifts, fixed-horizon tests."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    generate_events(store, "srm-check", users=2000, seed=3, shares=(0.56, 0.44))
    base = load_analysis_config(ANALYSIS_CONFIG)
    config = base.model_copy(
        update={
            "difference_type": "absolute",
            "sequential": False,
            "experiments": {"srm-check": base.experiment("ranking-mmoe-dml")},
            "srm_threshold": 0.002,  # not the default: the page names the configured one
        }
    )
    with store, AnalyticsServer(store, config, port=0, cache_seconds=2.0) as server:
        yield Served(server.url, store)


@pytest.fixture(scope="module")
def tiny_units(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A metric in tiny units (about 3e-9 per user, doubled by the treatment) with absolute lifts and
    sequential tests: values, lifts, CIs and boundaries all far below 0.0001."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    rng = np.random.default_rng(7)
    exposures, outcomes = [], []
    for i in range(600):
        user, v, t = f"tiny-{i:04d}", i % 2, START_MS + i * 60_000
        exposures.append(ExposureRow(f"{user}-x", "tiny-units", ("control", "treatment")[v], user, t))
        outcomes.append(
            OutcomeRow(f"{user}-d", user, "dose", t + 10, float(rng.normal(3e-9 * (1 + v), 1e-9)))
        )
    store.apply(exposures, outcomes, {})
    config = AnalysisConfig.model_validate(
        {
            "difference_type": "absolute",
            "sequential": True,
            "metrics": [{"name": "dose", "type": "mean", "event": "dose"}],
        }
    )
    with store, AnalyticsServer(store, config, port=0) as server:
        yield Served(server.url, store)


WINDOW_MS = (START_MS + 2 * DAY_MS, START_MS + 5 * DAY_MS + 30_500)


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """An experiment analysed in a window (days 2 to 5 of 7) beside one without."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    generate_events(store, "phase-two", users=1200, seed=5, click_prob=(0.10, 0.13))
    generate_events(store, "everything", users=600, seed=6)
    settings = {"start": WINDOW_MS[0], "end": WINDOW_MS[1], "control": "control"}
    config = AnalysisConfig.model_validate(
        {
            "metrics": [{"name": "ctr", "type": "binomial", "event": "click"}],
            "experiments": {"phase-two": settings},
        }
    )
    with store, AnalyticsServer(store, config, port=0) as server:
        yield Served(server.url, store)


ODD_KEYS = ("rollout-50%", "<img src=x onerror=alert(1)>")


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Experiment keys (they come from Kafka events) with a bare "%" and with HTML in them."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    for seed, key in enumerate(ODD_KEYS):
        generate_events(store, key, users=400, seed=20 + seed)
    with store, AnalyticsServer(store, load_analysis_config(ANALYSIS_CONFIG), port=0) as server:
        yield Served(server.url, store)


HOSTILE_KEYS = ("\x01", "!" * 1_000_000)  # a control character, 1 MB: each sorts before every other key


@pytest.fixture(scope="module")
def hostile_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Exposures (any producer writes them) whose experiment keys a dashboard URL refused, beside a real
    one."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    generate_events(store, "checkout", users=300, seed=30)
    junk = [ExposureRow(f"junk{i}", key, "a", f"junk-{i}", START_MS) for i, key in enumerate(HOSTILE_KEYS)]
    store.apply(junk, [], {})
    with store, AnalyticsServer(store, load_analysis_config(ANALYSIS_CONFIG), port=0) as server:
        yield Served(server.url, store)


@pytest.fixture(scope="module")
def times_beyond_a_date(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A time beyond what a JavaScript Date holds: one exposure of an experiment stamped in nanoseconds (any
    producer writes events). A config's window bound that far out is refused at load (test_analysis_window)."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    generate_events(store, "checkout", users=300, seed=30)
    store.apply([ExposureRow("ns", "checkout", "treatment", "ns-user", START_MS * 10**6)], [], {})
    config = AnalysisConfig.model_validate({"metrics": [{"name": "ctr", "type": "binomial", "event": "click"}]})
    with store, AnalyticsServer(store, config, port=0) as server:
        yield Served(server.url, store)


@pytest.fixture(scope="module")
def real_interleaving_demo(interleaving_demo_run: dict) -> Iterator[Served]:
    """The store the interleaving demo filled through Kafka (an interleaving and an A/B experiment side by side)."""
    store = DuckDBEventStore(str(interleaving_demo_run["workdir"] / "events"))
    config = load_analysis_config(interleaving_demo_run["metrics"])
    with store, AnalyticsServer(store, config, port=0) as server:
        yield Served(server.url, store)


@pytest.fixture(scope="module")
def interleaving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Interleaving experiments next to an A/B test, sequential tests: one where users clearly prefer B, one
    without a click yet whose arm B changed model while it ran (error codes and the warning)."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    simulate_interleaving(store, "ranking-interleave", users=900, seed=5, click_prob=(0.04, 0.07))
    changed = (ARMS[1][0], ARMS[1][1], "2")
    rows = [InterleavedRow(f"q{i}", "interleave-quiet", f"q-{i}", f"q-{i}-r", START_MS + i * DAY_MS, [1, 2], [0, 1],
                           *ARMS[0], *(changed if i > 1 else ARMS[1])) for i in range(4)]  # fmt: skip
    store.apply([ExposureRow(r.event_id, r.experiment_key, "interleaved", r.user_id, r.event_time_ms) for r in rows],
                [], {}, interleaved=rows)  # fmt: skip
    generate_events(store, "ranking-mmoe-dml", users=600, seed=6, click_prob=(0.10, 0.14))
    with store, AnalyticsServer(store, load_analysis_config(ANALYSIS_CONFIG), port=0) as server:
        yield Served(server.url, store)


MANY_VARIANTS = ("control", "t1", "t2", "treatment-with-a-rather-long-variant-name")
NO_USERS = "no-users"  # configured, never exposed
ESCAPED_KEY = "esc\x1b[31m \u202eline\nbreak"  # a terminal escape, a right-to-left override, a newline


@pytest.fixture(scope="module")
def display_edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """What the page must show legibly: five variants (one configured without users, one with a long name), a
    metric where lower is better (one variant significantly up, one down), a relative lift of 0.0004% whose CI
    excludes 0, values near 1e200 (their lifts overflow), both over 80 seconds, a key of 250 characters and one
    with control characters."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    n = len(MANY_VARIANTS)
    simulate_experiment(store, "many-variants", users=800, seed=11, variants=MANY_VARIANTS, weights=(1.0,) * n,
                        click_rate=(0.10,) * n, watch_scale=(10.0, 20.0, 10.0, 5.0))  # fmt: skip
    simulate_experiment(store, "k" * 250, users=200, seed=12)
    simulate_experiment(store, ESCAPED_KEY, users=200, seed=13)
    rng = np.random.default_rng(14)
    exposures, outcomes = [], []
    for i in range(800):
        key, v = ("tiny-relative-lift", "huge-values")[i % 2], i // 2 % 2
        user, t = f"edge-{i}", START_MS + i * 100  # 80 seconds, as in a short demo run
        exposures.append(ExposureRow(f"{user}-x", key, ("control", "treatment")[v], user, t))
        value = (
            100 * (1 + 4e-6 * v) + rng.normal(0, 1e-4)
            if key == "tiny-relative-lift"
            else rng.normal(1e200, 1e199)
        )
        outcomes.append(OutcomeRow(f"{user}-m", user, "measure", t + 10, float(value)))
    store.apply(exposures, outcomes, {})
    config = AnalysisConfig.model_validate(
        {
            "sequential": True,
            "metrics": [
                {"name": "click_through", "type": "binomial", "event": "click"},
                {"name": "watch", "type": "mean", "event": "watch", "inverse": True, "guardrail": True},
                {"name": "measure", "type": "mean", "event": "measure"},
            ],
            "experiments": {"many-variants": {"weights": dict.fromkeys((*MANY_VARIANTS, NO_USERS), 1.0)}},
        }
    )
    with store, AnalyticsServer(store, config, port=0) as server:
        yield Served(server.url, store)


@pytest.fixture(scope="module")
def cuped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A metric with CUPED (watch time, adjusted by the week before exposure) beside one without."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    simulate_experiment(store, "cuped-watch", users=600, seed=15)
    config = AnalysisConfig.model_validate(
        {
            "metrics": [
                {"name": "watch", "type": "mean", "event": "watch", "cuped": True},
                {"name": "click_through", "type": "binomial", "event": "click"},
            ]
        }
    )
    with store, AnalyticsServer(store, config, port=0) as server:
        yield Served(server.url, store)


@pytest.fixture(scope="module")
def corrected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Holm over three goal metrics (a binomial, a ratio, a CUPED mean) beside a guardrail left out of it."""
    store = DuckDBEventStore(str(tmp_path_factory.mktemp("store") / "events"))
    simulate_experiment(store, "corrected", users=1500, seed=11)
    config = AnalysisConfig.model_validate(
        {
            "correction": "holm",
            "metrics": [
                {"name": "conversion", "type": "binomial", "event": "click"},
                {
                    "name": "ctr",
                    "type": "ratio",
                    "numerator": "click",
                    "denominator": "impression",
                    "aggregation": "count",
                },
                {"name": "watch", "type": "continuous", "event": "watch", "cuped": True},
                {"name": "impressions", "type": "count", "event": "impression", "guardrail": True},
            ],
        }
    )
    with store, AnalyticsServer(store, config, port=0) as server:
        yield Served(server.url, store)


@pytest.fixture(
    params=[
        "real_demo",
        "real_interleaving_demo",
        "demo",
        "srm_absolute",
        "interleaving",
        "tiny_units",
        "odd_names",
        "windowed",
        "display_edges",
        "cuped",
        "corrected",
    ]
)
def dashboard_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(request.param).url


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


# ---------------------------------------------------------------- browser helpers


def _wait(chromium, predicate, timeout: float = 60.0):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A re-render between finding an element and reading it is retried, not an error.
    wait = WebDriverWait(
        chromium, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(lambda d: predicate(d))


def _open(chromium, url: str) -> None:
    chromium.get(url)
    _wait(chromium, lambda d: _loads(d) >= 1)


def _loads(chromium) -> int:
    return int(chromium.find_element("tag name", "body").get_attribute("data-loaded") or 0)


def _show_experiment(chromium, key: str) -> None:
    """Click the experiment and wait until the page has re-rendered with its report."""
    target = "#/" + quote(key)
    if chromium.execute_script("return location.hash") == target:
        return
    loads = _loads(chromium)
    row = chromium.execute_script(  # no CSS selector: a key may hold quotes or newlines
        "return [...document.querySelectorAll('#experiments tr[data-experiment]')]"
        ".find((tr) => tr.dataset.experiment === arguments[0])",
        key,
    )
    row.click()
    _wait(
        chromium,
        lambda d: (
            _loads(d) > loads and d.find_element("id", "report").get_attribute("data-experiment") == key
        ),
    )


def _field(row, name: str) -> str:
    return row.find_element("css selector", f'[data-field="{name}"]').text


def _assert_shows(text: str, expected: float, where: str) -> None:
    assert shown_number(text).matches(expected), (
        f"{where}: dashboard shows {text!r}, report says {expected!r}"
    )


def _assert_chance(text: str, expected: float | None, where: str) -> None:
    """A chance to win as shown: "–" for none, ">99.9%" from 99.95% (one decimal would read 100.0%), else
    in % with one decimal ("93.4%", "<0.1%")."""
    if expected is None:
        assert text == "–", f"{where}: dashboard shows {text!r}, report says null"
    elif text == ">99.9%":
        assert expected >= 0.9995, f"{where}: dashboard shows {text!r}, report says {expected!r}"
    else:
        _assert_shows(text, expected, where)


def _experiments(body: dict | list) -> list[dict]:
    return body if isinstance(body, list) else body["experiments"]


def _lift(row: dict, difference_type: str) -> dict:
    return row["absolute_lift" if difference_type == "absolute" else "relative_lift"]


# ---------------------------------------------------------------- tests


# What the page shows, read in one round trip (and so from one rendering): texts of every [data-field].
_SNAPSHOT_JS = """
const fields = (root) => Object.fromEntries(
  [...root.querySelectorAll('[data-field]')].map((el) => [el.dataset.field, el.textContent]));
const lines = (sel) => [...document.querySelectorAll(sel)].map((l) => ({
  series: l.dataset.series, points: l.getAttribute('points').trim().split(/\\s+/).filter(Boolean).length }))
  .filter((l) => l.points > 0);
return {
  experiments: Object.fromEntries([...document.querySelectorAll('#experiments tr[data-experiment]')].map((tr) => [
    tr.dataset.experiment,
    { ...fields(tr), srmTitle: tr.querySelector('[data-field="srm"]')?.title ?? null,
      name: tr.querySelector('.exp-name').textContent,
      users: Object.fromEntries([...tr.querySelectorAll('[data-variant]')].map(
        (c) => [c.dataset.variant, c.querySelector('[data-field="users"]').textContent])) }])),
  report: document.getElementById('report').dataset.experiment || null,
  title: document.getElementById('report-title').textContent,
  overflow: Math.max(...[document.documentElement, ...document.querySelectorAll('.panel')].map(
    (box) => box.scrollWidth - box.clientWidth)),  // wider than the window, or a table wider than its panel
  srmBanner: !document.getElementById('srm-banner').hidden,
  rows: Object.fromEntries([...document.querySelectorAll('#metrics tr[data-metric]')].map((tr) => [
    tr.dataset.metric + '|' + tr.dataset.variant,
    { ...fields(tr),
      significantAttr: tr.querySelector('[data-field="significant"]')?.dataset.significant ?? null,
      verdict: [...(tr.querySelector('[data-field="significant"]')?.classList ?? [])],
      variantName: tr.querySelector('td.variant').textContent,
      ciBar: Boolean(tr.querySelector('svg.ci-bar rect.interval')),
      ciLabel: tr.querySelector('svg.ci-bar')?.getAttribute('aria-label') ?? null }])),
  charts: Object.fromEntries(['lift-chart', 'traffic-chart'].map((id) => {
    const chart = document.getElementById(id), box = chart.closest('figure').getBoundingClientRect();
    const legend = [...chart.querySelectorAll('.legend *')].filter((e) => !e.children.length && e.textContent);
    const yLabels = [...chart.querySelectorAll('text[text-anchor="end"]')].map((t) => t.textContent);
    const plot = chart.querySelector('svg').getBoundingClientRect();
    const clipped = [...chart.querySelectorAll('svg text')].filter((t) => { const r = t.getBoundingClientRect();
      return r.left < plot.left || r.right > plot.right || r.top < plot.top || r.bottom > plot.bottom; });
    return [id, {
      yLabels,  // and the time axis (a chart without data has only its "no data" text)
      xLabels: yLabels.length ? [...chart.querySelectorAll('text[text-anchor="middle"]')].map((t) => t.textContent) : [],
      clipped: clipped.map((t) => t.textContent),
      legend: legend.map((e) => { const r = e.getBoundingClientRect();
        return { text: e.textContent, inside: r.left >= box.left && r.right <= box.right && r.top >= box.top
          && r.bottom <= box.bottom, left: r.left, right: r.right, top: r.top, bottom: r.bottom }; }),
    }];
  })),
  liftMetric: document.getElementById('lift-metric').value,
  liftLines: lines('#lift-chart polyline'),
  trafficLines: lines('#traffic-chart polyline'),
  metricsHidden: document.getElementById('metrics').hidden,
  interleaving: document.getElementById('interleaving').hidden ? null : {
    counts: fields(document.getElementById('preference-counts')),
    arms: Object.fromEntries([...document.querySelectorAll('#arms [data-arm]')].map((a) => [a.dataset.arm, fields(a)])),
    sequential: document.querySelector('#arms [data-field="il_sequential"]').textContent,
    preferred: document.querySelector('#arms [data-field="preferred"]')?.textContent ?? null,
    armsBanner: !document.getElementById('arms-banner').hidden,
    armsLooseText: [...document.getElementById('arms').childNodes].filter((n) => n.nodeType === Node.TEXT_NODE)
      .map((n) => n.textContent),
    bar: Object.fromEntries([...document.querySelectorAll('svg.diverging-bar rect')].map(
      (r) => [r.getAttribute('class'), Number(r.dataset.users)])),
    tests: Object.fromEntries([...document.querySelectorAll('#preference-tests tr[data-test]')].map((tr) => [
      tr.dataset.test,
      { ...fields(tr),
        significantAttr: tr.querySelector('[data-field="significant"]')?.dataset.significant ?? null,
        ciBar: Boolean(tr.querySelector('svg.ci-bar rect.interval')),
        ciLabel: tr.querySelector('svg.ci-bar')?.getAttribute('aria-label') ?? null }])),
  },
};
"""


def _tick(text: str) -> float:
    """An axis label's number: '+12.5%', '0', '1.5k', '2M', '2.5e-9'."""
    scale = {"k": 1e3, "M": 1e6}.get(text[-1:], 1.0)
    return shown_number(text[:-1] if scale != 1.0 else text).value * scale


def _check_charts(shown: dict, lift_labels: list[str], traffic_labels: list[str]) -> None:
    """Axis labels tell their ticks apart (times too: five "11:06" under a demo's minute); every series has its
    legend entry, whole, inside its chart, none on top of another (a chart without any line has none)."""
    lines = {"lift-chart": shown["liftLines"], "traffic-chart": shown["trafficLines"]}
    for chart, labels in (("lift-chart", lift_labels), ("traffic-chart", traffic_labels)):
        page = shown["charts"][chart]
        ticks = [_tick(text) for text in page["yLabels"]]
        increasing = all(a < b for a, b in zip(ticks, ticks[1:], strict=False))
        assert increasing, f"{chart} y axis reads {page['yLabels']}"
        assert len(set(page["xLabels"])) == len(page["xLabels"]), f"{chart} time axis reads {page['xLabels']}"
        assert page["clipped"] == [], f"{chart}: labels cut off at the edge of the chart: {page['clipped']}"
        legend = page["legend"]
        assert [e["text"] for e in legend] == (labels if lines[chart] else []), chart
        assert all(e["inside"] for e in legend), f"{chart}: legend entries outside the chart: {legend}"
        for i, a in enumerate(legend):
            for b in legend[i + 1 :]:
                apart = a["right"] <= b["left"] or b["right"] <= a["left"] or a["bottom"] <= b["top"]
                assert apart or b["bottom"] <= a["top"], f"{chart}: {a['text']!r} overlaps {b['text']!r}"


def _check_list(shown: dict, listing: list[dict]) -> None:
    assert sorted(shown) == sorted(e["experiment_key"] for e in listing)
    for exp in listing:
        key, row = exp["experiment_key"], shown[exp["experiment_key"]]
        assert row["name"] == text_format.name(key), f"{key!r} is shown as {row['name']!r}"
        _assert_shows(row["total_users"], exp["total_users"], f"{key} total users")
        for variant in exp["variants"]:
            _assert_shows(row["users"][variant["key"]], variant["users"], f"{key} users[{variant['key']}]")
        if exp["kind"] == "interleaving":
            assert row["kind"] == "interleaving" and exp["srm"]["p_value"] is None and "srm" not in row, key
            continue
        assert row["srm"].startswith("⚠ SRM") is bool(exp["srm"]["flagged"]), row["srm"]
        if exp["srm"]["flagged"]:
            assert row["srmTitle"] == f"sample ratio mismatch: chi-square p < {exp['srm']['threshold']}", key
        _assert_shows(row["srm"].split(" p")[1].lstrip("="), exp["srm"]["p_value"], f"{key} SRM p-value")


def _check_interleaving(shown: dict, report: dict) -> None:
    """Every number of the interleaving panel, its arms, flags and verdicts, and its charts."""
    key, il, page = report["experiment_key"], report["interleaving"], shown["interleaving"]
    assert page is not None and shown["metricsHidden"], f"{key}: the interleaving panel is not shown"
    for field, value in (("il_users", il["users"]), ("users_with_clicks", il["users_with_clicks"]),
                         ("wins_a", il["wins_a"]), ("ties", il["ties"]), ("wins_b", il["wins_b"])):  # fmt: skip
        _assert_shows(page["counts"][field], value, f"{key} {field}")
    assert page["bar"] == {"wins-a": il["wins_a"], "ties": il["ties"], "wins-b": il["wins_b"]}, key
    for label, arm in (("A", il["arm_a"]), ("B", il["arm_b"])):
        assert page["arms"][label] == {
            "arm_key": arm["key"], "arm_model": f"{arm['model_name']} v{arm['model_version']}"
        }, f"{key} arm {label}"  # fmt: skip
    assert page["sequential"] == ("sequential (always-valid)" if il["sequential"] else "fixed horizon")
    assert page["preferred"] == (f"preferred: {il['preferred']}" if il["preferred"] else None), key
    assert page["armsBanner"] is (len(il["arm_sets"]) > 1), key
    loose = page["armsLooseText"]  # a "null" where no arm is preferred
    assert loose == [], f"{key}: text beside the arm badges: {loose}"
    for name in ("preference", "credit"):
        test, row, where = il[name], page["tests"][name], f"{key}/{name}"
        if test["error"]:
            assert row["error"] == test["error"] and "estimate" not in row, where
            assert row["error_message"] == test["error_message"], where
            continue
        for field, value in (("estimate", test["estimate"]), ("ci_low", test["ci"][0]), ("ci_high", test["ci"][1]),
                             ("p_value", test["p_value"])):  # fmt: skip
            _assert_shows(row[field], value, f"{where} {field}")
        assert row["significantAttr"] == str(test["significant"]).lower() and row["ciBar"], where
        assert row["ciLabel"] == f"CI {row['ci_low']} to {row['ci_high']}", where  # what a screen reader says
    points = [p for p in il["timeline"] if p["estimate"] is not None]
    assert [line["points"] for line in shown["liftLines"]] == ([len(points)] if points else []), key
    assert [line["series"] for line in shown["trafficLines"]] == ["interleaved"], key
    _check_charts(shown, ["Δ (B − A)"], ["interleaved"])


def _check_report(shown: dict, report: dict) -> None:
    key, difference_type = report["experiment_key"], report["difference_type"]
    assert shown["report"] == key and shown["title"] == text_format.name(key)
    assert shown["overflow"] <= 0, f"{key}: {shown['overflow']} px wider than the window or a panel"
    assert shown["srmBanner"] is bool(report["srm"]["flagged"])
    if report["kind"] == "interleaving":
        _check_interleaving(shown, report)
        return
    assert not shown["metricsHidden"] and shown["interleaving"] is None, key
    compared = 0
    for metric in report["metrics"]:
        # the metric's name cell, in its first row, says when the correction leaves it out (a guardrail)
        first = shown["rows"][f"{metric['name']}|{metric['variants'][0]['variant']}"]
        uncorrected = report["correction"] != "none" and not metric["corrected"]
        assert ("uncorrected" in first) is uncorrected, f"{key}/{metric['name']}: {first}"
        for value in metric["variants"]:
            where = f"{key}/{metric['name']}/{value['variant']}"
            row = shown["rows"][f"{metric['name']}|{value['variant']}"]
            _assert_shows(row["users"], value["users"], f"{where} users")
            if value["users"] and value["value"] is not None:
                _assert_shows(row["value"], value["value"], f"{where} value")
            else:  # the mean of no users is no number, whatever the report holds
                assert row["value"] == "–", f"{where}: value {row['value']!r} of {value['users']} users"
            variant = text_format.name(value["variant"])
            assert row["variantName"] in (variant, f"{variant} (control)"), where
            lift = None if value["is_control"] else _lift(value, difference_type)
            if lift is None or value["error"]:
                assert "lift" not in row and "chance_to_win" not in row, where
                if value["error"]:  # the code and what it means
                    shown_error = (row["error"], row.get("error_message"))
                    assert shown_error == (value["error"], value["error_message"]), where
                continue
            _assert_shows(row["lift"], lift["estimate"], f"{where} lift")
            ci = value["adjusted_ci"] or lift["ci"]  # the interval the verdict agrees with
            _assert_shows(row["ci_low"], ci[0], f"{where} CI low")
            _assert_shows(row["ci_high"], ci[1], f"{where} CI high")
            _assert_shows(row["p_value"], value["p_value"], f"{where} p-value")
            _assert_shows(row["adjusted_p_value"], value["adjusted_p_value"], f"{where} adjusted p")
            _assert_chance(row["chance_to_win"], value["chance_to_win"], f"{where} chance to win")
            assert row["significantAttr"] == str(bool(value["significant"])).lower(), where
            if value["significant"]:  # green when the metric moved the good way: down where lower is better
                good = (lift["estimate"] > 0) != metric["inverse"]
                assert ("win" if good else "lose") in row["verdict"], f"{where}: {row['verdict']}"
            assert row["ciBar"], f"{where}: no CI bar"
            assert row["ciLabel"] == f"CI {row['ci_low']} to {row['ci_high']}", where  # in the lift's units
            if report["sequential"]:
                half_width = (ci[1] - ci[0]) / 2
                _assert_shows(row["boundary"], half_width, f"{where} sequential boundary")
            else:
                assert "boundary" not in row, where
            compared += 1
    errors = [v["error"] for m in report["metrics"] for v in m["variants"] if not v["is_control"]]
    assert compared > 0 or all(errors), f"{key}: no variant was compared with control"  # nor said why

    # one line per variant with points (a variant without users has none)
    treatments = [v["key"] for v in report["variants"] if not v["is_control"]]
    assert shown["liftMetric"] in {m["name"] for m in report["metrics"]}
    lift_points = {
        variant: [
            p
            for p in report["timeline"]
            if p["metric"] == shown["liftMetric"] and p["variant"] == variant and p["estimate"] is not None
        ]
        for variant in treatments
    }
    drawn = [v for v in treatments if lift_points[v]]
    assert [line["series"].split(" vs ")[0] for line in shown["liftLines"]] == drawn
    for line, variant in zip(shown["liftLines"], drawn, strict=True):
        assert line["points"] == len(lift_points[variant]), f"{key}: lift chart of {variant}"
    traffic_points = {
        v["key"]: [p for p in report["traffic"] if p["variant"] == v["key"]] for v in report["variants"]
    }
    drawn = [v for v, points in traffic_points.items() if points]
    assert [line["series"] for line in shown["trafficLines"]] == drawn
    for line, variant in zip(shown["trafficLines"], drawn, strict=True):
        assert line["points"] == len(traffic_points[variant]), f"{key}: traffic chart of {variant}"
    name, control = text_format.name, text_format.name(report["control"])
    _check_charts(
        shown, [f"{name(v)} vs {control}" for v in treatments], [name(v["key"]) for v in report["variants"]]
    )


@pytest.mark.integration
def test_dashboard_shows_the_report_numbers(chromium, dashboard_url: str) -> None:
    listing = _experiments(_get_json(f"{dashboard_url}/api/experiments"))
    assert listing, "the server lists no experiments"
    _open(chromium, dashboard_url + "/?refresh=0")  # a refresh mid-read would replace the rows being read
    _check_list(chromium.execute_script(_SNAPSHOT_JS)["experiments"], listing)
    for exp in listing:
        report = _get_json(f"{dashboard_url}/api/experiments/{quote(exp['experiment_key'])}/report")
        _show_experiment(chromium, exp["experiment_key"])
        _check_report(chromium.execute_script(_SNAPSHOT_JS), report)

    errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"browser console errors: {errors}"
    origins = chromium.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
    )
    assert set(origins) <= {dashboard_url}, f"dashboard fetched from outside its origin: {set(origins)}"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fixture", "experiments"),
    [
        ("real_demo", {"retrieval-ssmtl", "ranking-mmoe-dml"}),
        ("real_interleaving_demo", {"retrieval-ssmtl", "ranking-interleave-dml", "ranking-mmoe-dml"}),
    ],
)
def test_dashboard_screenshot(
    chromium, request: pytest.FixtureRequest, fixture: str, experiments: set
) -> None:
    """dashboard.png shows the demo's first experiment; dashboard-<key>.png each one of both demos."""
    demo = request.getfixturevalue(fixture)
    listing = _experiments(_get_json(f"{demo.url}/api/experiments"))
    assert {e["experiment_key"] for e in listing} == experiments
    ARTIFACTS.mkdir(exist_ok=True)
    for i, exp in enumerate(listing):
        key = exp["experiment_key"]
        _open(chromium, f"{demo.url}/?refresh=0#/{quote(key)}")
        _wait(
            chromium,
            lambda d, key=key: d.find_element("id", "report").get_attribute("data-experiment") == key,
        )
        bottom = chromium.execute_script(
            "return document.querySelector('footer').getBoundingClientRect().bottom"
        )
        shot = chromium.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": 1440, "height": int(bottom) + 12, "scale": 1},
            },
        )
        png = base64.b64decode(shot["data"])
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        for target in [ARTIFACTS / f"dashboard-{key}.png"] + (
            [ARTIFACTS / "dashboard.png"] if i == 0 and fixture == "real_demo" else []
        ):
            target.write_bytes(png)


@pytest.mark.integration
def test_values_in_tiny_units_keep_four_significant_digits(chromium, tiny_units: Served) -> None:
    """A value, absolute lift, CI end or boundary below 0.0001 is shown with 4 significant digits (1.234e-9),
    not as 0.00000000: the text is precise to 1/2000 of the number it shows."""
    report = _get_json(f"{tiny_units.url}/api/experiments/tiny-units/report")
    _open(chromium, f"{tiny_units.url}/?refresh=0#/tiny-units")
    rows = chromium.execute_script(_SNAPSHOT_JS)["rows"]
    for variant in report["metrics"][0]["variants"]:
        row, expected = rows[f"dose|{variant['variant']}"], {"value": variant["value"]}
        if not variant["is_control"]:
            lift = variant["absolute_lift"]
            expected |= {"lift": lift["estimate"], "ci_low": lift["ci"][0], "ci_high": lift["ci"][1],
                         "boundary": (lift["ci"][1] - lift["ci"][0]) / 2}  # fmt: skip
        assert len(expected) == (1 if variant["is_control"] else 5)
        for field, number in expected.items():
            shown = shown_number(row[field])
            assert shown.matches(number) and shown.tolerance <= 5e-4 * abs(number), (
                f"{variant['variant']} {field}: dashboard shows {row[field]!r}, report says {number!r}"
            )


@pytest.mark.integration
def test_the_analysis_window_is_shown_where_one_is_set(chromium, windowed: Served) -> None:
    """The list and the report header say which window a report covers (none where the config sets none)."""
    report = _get_json(f"{windowed.url}/api/experiments/phase-two/report")
    assert report["analysis_window"] == {"start_ms": WINDOW_MS[0], "end_ms": WINDOW_MS[1]}
    text = "window 2026-11-20 11:06:40 UTC – 2026-11-23 11:07:10.500 UTC"
    _open(chromium, f"{windowed.url}/?refresh=0#/phase-two")
    shown = chromium.execute_script(_SNAPSHOT_JS)["experiments"]
    assert shown["phase-two"]["window"] == text and "window" not in shown["everything"]
    meta = chromium.find_element("id", "report-meta").find_element("css selector", '[data-field="window"]')
    assert meta.text.endswith(text)
    _show_experiment(chromium, "everything")
    meta = chromium.find_element("id", "report-meta")
    assert not meta.find_elements("css selector", '[data-field="window"]')


@pytest.mark.integration
@pytest.mark.parametrize("key", ODD_KEYS)
def test_a_hand_typed_link_selects_the_experiment(chromium, odd_names: Served, key: str) -> None:
    """#/<key> as the README writes it, not percent-encoded: a bare "%" (which decodeURIComponent refuses) selects
    its experiment like any other key, and HTML in a key is shown as text."""
    chromium.get("about:blank")  # a fresh page: from the dashboard itself only the hash would change
    chromium.get(f"{odd_names.url}/?refresh=0#/{key}")
    error = chromium.find_element("id", "error")
    _wait(chromium, lambda d: _loads(d) >= 1 or error.get_attribute("hidden") is None)  # loaded, or failed
    assert error.get_attribute("hidden") is not None, f"the page shows {error.text!r}"
    shown = chromium.execute_script(_SNAPSHOT_JS)
    assert sorted(shown["experiments"]) == sorted(ODD_KEYS) and shown["report"] == key
    assert chromium.find_element("id", "report-title").text == key
    assert not chromium.find_elements("css selector", "img"), "HTML from an experiment key became an element"


def _open_or_fail(chromium, url: str) -> None:
    """Open ``url`` on a fresh page and wait until it has loaded, or shows an error (then fail with its
    text)."""
    chromium.get("about:blank")  # a fresh page: from the dashboard itself only the hash would change
    chromium.get(url)
    error = chromium.find_element("id", "error")
    _wait(chromium, lambda d: _loads(d) >= 1 or error.get_attribute("hidden") is None)
    assert error.get_attribute("hidden") is not None, f"the page shows {error.text[:200]!r}"


@pytest.mark.integration
def test_odd_experiment_keys_leave_the_page_working(chromium, hostile_keys: Served) -> None:
    """Opened without #/<key>, the page shows the first experiment listed: one whose key is 1 MB (no URL holds
    it; it is not analysed, not listed) or holds a control character (its report URL was refused with 400),
    and the page showed only that error."""
    _open_or_fail(chromium, f"{hostile_keys.url}/?refresh=0")
    shown = chromium.execute_script(_SNAPSHOT_JS)
    assert sorted(shown["experiments"]) == ["\x01", "checkout"] and shown["report"] == "\x01"


@pytest.mark.integration
def test_times_beyond_a_date_leave_the_page_working(chromium, times_beyond_a_date: Served) -> None:
    """One exposure stamped in nanoseconds (checkout's traffic chart reaches it) failed the page: "Could not
    load data: Invalid time value". The rest is drawn as usual (points at such times are left out of the
    charts: checkout's traffic buckets all end there)."""
    _open_or_fail(chromium, f"{times_beyond_a_date.url}/?refresh=0#/checkout")
    shown = chromium.execute_script(_SNAPSHOT_JS)
    assert shown["report"] == "checkout" and shown["experiments"]["checkout"]["total_users"]
    assert {row.split("|")[1] for row in shown["rows"]} == {"control", "treatment"}


@pytest.mark.integration
def test_dashboard_refreshes_by_itself(chromium, demo: Served) -> None:
    """New events reach an open page without a reload: the experiment list shows the new user count."""
    _open(chromium, f"{demo.url}/?refresh=1")
    row = chromium.find_element("css selector", 'tr[data-experiment="ranking-mmoe-dml"]')
    expected = shown_number(_field(row, "total_users")).value + 37
    generate_events(demo.store, "ranking-mmoe-dml", users=37, seed=9, first_user=10**5)

    def updated(driver) -> bool:
        row = driver.find_element("css selector", 'tr[data-experiment="ranking-mmoe-dml"]')
        return shown_number(_field(row, "total_users")).value == expected

    _wait(chromium, updated)


def _leave(chromium) -> None:
    """Fail on errors in the browser console (reading it empties it), and leave the shared browser on a blank
    page."""
    errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    chromium.get("about:blank")
    assert not errors, f"browser console errors: {errors}"


def _shown_report(chromium, served: Served, key: str) -> tuple[dict, dict]:
    """The report of ``key`` and what the page shows of it, opened on a fresh page with its link."""
    report = _get_json(f"{served.url}/api/experiments/{quote(key, safe='')}/report")
    _open_or_fail(chromium, f"{served.url}/?refresh=0#/{quote(key, safe='')}")
    shown = chromium.execute_script(_SNAPSHOT_JS)
    assert shown["report"] == key
    return report, shown


@pytest.mark.integration
def test_a_lift_near_zero_keeps_its_sign_and_digits(chromium, display_edges: Served) -> None:
    """A relative lift of +0.0004% whose CI excludes 0 was shown "+0.00% [+0.00%, +0.00%]" beside "significant ▲",
    as if the interval reached zero: below 0.005% a lift, CI end or boundary shows 2 significant digits."""
    report, shown = _shown_report(chromium, display_edges, "tiny-relative-lift")
    metric = next(m for m in report["metrics"] if m["name"] == "measure")
    treatment = next(v for v in metric["variants"] if not v["is_control"])
    lift = treatment["relative_lift"]
    assert treatment["significant"] and 0 < lift["ci"][0] < lift["ci"][1] < 5e-5, lift  # the case at hand
    row = shown["rows"]["measure|treatment"]
    half_width = (lift["ci"][1] - lift["ci"][0]) / 2
    for field, number in (("lift", lift["estimate"]), ("ci_low", lift["ci"][0]), ("ci_high", lift["ci"][1]),
                          ("boundary", half_width)):  # fmt: skip
        text = shown_number(row[field])
        assert text.matches(number) and text.tolerance <= 0.05 * number, f"{field} {row[field]!r}: {number!r}"
    _leave(chromium)


@pytest.mark.integration
def test_values_near_1e200_fit_the_page(chromium, display_edges: Served) -> None:
    """A mean of 9.9e199 was written out in 200 digits with thousands separators, 3,500 px wide: values from
    1e9 up show 4 significant digits in exponent notation (9.917e+199)."""
    report, shown = _shown_report(chromium, display_edges, "huge-values")
    for value in report["metrics"][-1]["variants"]:
        text = shown["rows"][f"measure|{value['variant']}"]["value"]
        assert len(text) <= 10 and shown_number(text).matches(value["value"]), text
    assert shown["overflow"] <= 0, f"{shown['overflow']} px wider than the window or a panel"
    _leave(chromium)


@pytest.mark.integration
@pytest.mark.parametrize("key", ["k" * 250, ESCAPED_KEY], ids=["long", "control-characters"])
def test_names_from_events_are_shown_whole_and_escaped(chromium, display_edges: Served, key: str) -> None:
    """Experiment keys come from events: one of 250 characters pushed the tables past the window (2,000 px); a
    terminal escape, a right-to-left override or a newline was passed to the page raw (ESC shown as a box, the
    override reversing the text after it, the newline as a space), so two keys could look alike. They are
    escaped as the text reports escape them (text_format.name) and long ones wrap."""
    _, shown = _shown_report(chromium, display_edges, key)
    assert shown["experiments"][key]["name"] == shown["title"] == text_format.name(key)
    assert shown["overflow"] <= 0, f"{shown['overflow']} px wider than the window or a panel"
    _leave(chromium)


@pytest.mark.integration
def test_every_variant_has_its_legend_entry_in_the_charts(chromium, display_edges: Served) -> None:
    """Legend entries were placed every 130 px of a 560 px chart: from the fifth variant on they fell outside it,
    and a long variant name ran under the next entry."""
    report, shown = _shown_report(chromium, display_edges, "many-variants")
    variants = [v["key"] for v in report["variants"]]
    assert len(variants) == 5
    _check_charts(shown, [f"{v} vs control" for v in variants if v != "control"], variants)
    _leave(chromium)


@pytest.mark.integration
def test_a_variant_without_users_shows_no_value(chromium, display_edges: Served) -> None:
    """A configured variant nobody was exposed to showed a value of 0 for every metric (a click-through of 0
    among no users); it shows "–", its users 0 and the stats' NO_UNITS with its message. The report says
    null for its value and has no lift for it."""
    report, shown = _shown_report(chromium, display_edges, "many-variants")
    for metric in report["metrics"]:
        (empty,) = [v for v in metric["variants"] if v["variant"] == NO_USERS]
        assert (empty["value"], empty["relative_lift"], empty["chance_to_win"]) == (None, None, None), empty
        row = shown["rows"][f"{metric['name']}|{NO_USERS}"]
        assert (row["users"], row["value"], row["error"]) == ("0", "–", "NO_UNITS"), metric["name"]
        assert row["error_message"] == "an arm has fewer than 2 units", metric["name"]
    _leave(chromium)


@pytest.mark.integration
def test_the_chance_to_win_of_each_treatment_is_shown(chromium, demo: Served) -> None:
    """The report has every treatment's Bayesian chance to win; the metric table had no column for it."""
    report, shown = _shown_report(chromium, demo, "ranking-mmoe-dml")
    for metric in report["metrics"]:
        for value in metric["variants"]:
            where = f"{metric['name']}/{value['variant']}"
            row = shown["rows"][f"{metric['name']}|{value['variant']}"]
            if value["is_control"]:
                assert "chance_to_win" not in row, where
            else:
                assert value["chance_to_win"] is not None, where  # the case at hand
                _assert_chance(row["chance_to_win"], value["chance_to_win"], where)
    _leave(chromium)


# What overflows the window, or is cut off: the page wider than its viewport, a panel wider than its box, a
# table wider than its box that does not scroll (its columns out of reach).
_WIDTH_JS = """
const root = document.documentElement;
const tables = [...document.querySelectorAll('table.grid')].filter((t) => t.offsetParent !== null);
return {
  viewport: root.clientWidth, page: root.scrollWidth,
  panels: [...document.querySelectorAll('.panel')].filter((p) => p.scrollWidth > p.clientWidth)
    .map((p) => p.id || p.className),
  unreachable: tables.filter((t) => t.getBoundingClientRect().width > t.parentElement.clientWidth + 0.5
    && !['auto', 'scroll'].includes(getComputedStyle(t.parentElement).overflowX)).map((t) => t.id),
  scrolled: tables.filter((t) => t.parentElement.scrollWidth > t.parentElement.clientWidth).map((t) => t.id),
};
"""


@pytest.mark.integration
@pytest.mark.parametrize("width", [800, 1280])
@pytest.mark.parametrize(
    ("fixture", "key"), [("display_edges", "many-variants"), ("interleaving", "ranking-interleave")]
)
def test_a_narrow_window_scrolls_the_tables_not_the_page(
    chromium, request: pytest.FixtureRequest, width: int, fixture: str, key: str
) -> None:
    """Below about 1,300 px the metric table (eleven columns) widened the page: at 1,280 px it was 1,302 px
    wide and the whole page scrolled sideways. The page is as wide as the window; a table wider than its panel
    scrolls inside it."""
    try:
        chromium.set_window_size(width, 1000)
        _shown_report(chromium, request.getfixturevalue(fixture), key)
        shown = chromium.execute_script(_WIDTH_JS)
        assert shown["viewport"] <= width and shown["page"] == shown["viewport"], shown
        assert shown["panels"] == [] and shown["unreachable"] == [], shown
        if width == 800 and fixture == "display_edges":  # the case at hand: a table wider than the window
            assert shown["scrolled"] == ["metrics"], shown
        _leave(chromium)
    finally:
        chromium.set_window_size(1440, 1400)  # conftest's --window-size: the browser is shared


@pytest.mark.integration
def test_a_cuped_metric_says_its_values_are_adjusted(chromium, cuped: Served) -> None:
    """A CUPED metric's values are adjusted means (here 10.05 and 11.27 watch seconds for raw means of 10.12
    and 11.20), and the page showed them as plain values, unlike the text report ("[mean, cuped]"): its name
    carries a CUPED badge, other metrics none."""
    report, _ = _shown_report(chromium, cuped, "cuped-watch")
    watch = report["metrics"][0]
    assert watch["cuped"] and any(v["value"] != v["unadjusted_value"] for v in watch["variants"])
    badges = chromium.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#metrics td.metric-name')].map((td) => "
        "[td.parentElement.dataset.metric, td.querySelector('[data-field=\"cuped\"]')?.textContent ?? null]))"
    )
    assert badges == {"watch": "CUPED-adjusted", "click_through": None}
    _leave(chromium)


@pytest.mark.integration
def test_a_corrected_report_shows_the_intervals_its_verdicts_agree_with(chromium, corrected: Served) -> None:
    """With Holm the page showed each treatment's unadjusted 95% CI beside a verdict decided on the adjusted
    p-value, so an interval clear of 0 could read "not significant". The CI column is now "CI (holm)": each
    interval at the level where it excludes 0 exactly when the Holm p-value is below alpha, the unadjusted one
    in its tooltip where they differ; the header says over how many goal comparisons; the guardrail is marked
    uncorrected."""
    report, shown = _shown_report(chromium, corrected, "corrected")
    assert report["correction"] == "holm" and report["correction_family_size"] == 3
    page = chromium.execute_script(
        "return {head: [...document.querySelectorAll('#metrics thead th')].map((th) => th.textContent),"
        " meta: document.getElementById('report-meta').textContent,"
        " titles: Object.fromEntries([...document.querySelectorAll('#metrics tr[data-metric]')].map((tr) =>"
        " [tr.dataset.metric + '|' + tr.dataset.variant, tr.querySelector('td.ci-text')?.title ?? null]))}"
    )
    assert "CI (holm)" in page["head"] and "p (holm)" in page["head"], page["head"]
    assert "correction: holm over 3 goal comparisons" in page["meta"], page["meta"]
    widened = 0
    for metric in report["metrics"]:
        row = metric["variants"][1]
        lift, where = row["relative_lift"], f"{metric['name']}|{row['variant']}"
        assert (row["adjusted_ci"][0] > 0 or row["adjusted_ci"][1] < 0) is row["significant"], where
        title = page["titles"][where]
        if row["adjusted_ci"] == lift["ci"]:
            assert not title, where
            continue
        widened += 1
        low, high = re.fullmatch(r"unadjusted 95% CI \[(\S+), (\S+)\]", title).groups()
        _assert_shows(low, lift["ci"][0], f"{where} unadjusted CI low")
        _assert_shows(high, lift["ci"][1], f"{where} unadjusted CI high")
    assert widened >= 1, "Holm raised no p-value: nothing was widened"
    badges = {key: row["uncorrected"] for key, row in shown["rows"].items() if "uncorrected" in row}
    assert badges == {"impressions|control": "uncorrected"}  # in the metric's first row
    _leave(chromium)


@pytest.mark.integration
def test_chart_axis_labels_tell_their_ticks_apart(chromium, tiny_units: Served) -> None:
    """The lift chart of a metric in tiny units labelled every tick of its y axis "0" (steps of 2e-9 printed
    with 2 decimals), and a relative axis in steps of 2.5% printed 12.5% as "+13%": a label has the decimals its
    step needs."""
    _, shown = _shown_report(chromium, tiny_units, "tiny-units")
    labels = shown["charts"]["lift-chart"]["yLabels"]
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    _check_charts(shown, ["treatment vs control"], ["control", "treatment"])
    _leave(chromium)


# Holds the page's requests for one experiment's report until __release() (resolves once the page has drawn
# what it answers: the answer is in memory, so all that follows it runs before the next task).
_HOLD_REPORT_JS = """
const path = `/experiments/${encodeURIComponent(arguments[0])}/report`, real = window.fetch;
window.__held = [];
window.fetch = (url, options) => !String(url).endsWith(path) ? real(url, options)
  : new Promise((resolve) => window.__held.push(async () => {
      const resp = await real(url, options), body = await resp.text();
      resolve({ ok: resp.ok, status: resp.status, json: async () => JSON.parse(body) });
    }));
window.__release = (done) => Promise.all(window.__held.map((answer) => answer()))
  .then(() => setTimeout(done, 0));
"""


@pytest.mark.integration
def test_a_late_report_does_not_replace_the_one_selected_since(chromium, display_edges: Served) -> None:
    """A refresh still waiting for experiment A's report (a report takes a second or two to compute) when the
    analyst selects B: B was drawn, then A's late answer replaced it, under B's highlighted row and #/B."""
    first, second = "huge-values", "tiny-relative-lift"
    _open_or_fail(chromium, f"{display_edges.url}/?refresh=0#/{first}")
    chromium.execute_script(_HOLD_REPORT_JS, first)
    chromium.find_element("id", "refresh-now").click()
    _wait(chromium, lambda d: d.execute_script("return window.__held.length") == 1)
    _show_experiment(chromium, second)
    chromium.execute_async_script("window.__release(arguments[0])")
    shown = chromium.execute_script(_SNAPSHOT_JS)
    selected = chromium.find_element("css selector", "#experiments tr.selected").get_attribute(
        "data-experiment"
    )
    assert (shown["report"], shown["title"], selected) == (second, second, second)
    _leave(chromium)
