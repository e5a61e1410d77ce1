"""Every series the Grafana dashboard (and the HPAs' prometheus-adapter rules) query is one the servers really
export, with the labels the queries match, aggregate and label by.

The exported names come from the prometheus_client registries after importing every module of the serving
packages that uses prometheus_client, not from a hand-written list: renaming a metric in a server breaks
this test until the dashboard follows.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import math
import operator
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
DASHBOARDS = sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json"))
SERVING_DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "mtrank-serving.json"
ADAPTER_RULES = sorted((ROOT / "deploy" / "k8s").rglob("prometheus-adapter-rules.yaml"))
# experiment_router: its config watcher's reload counter is served by the ranker and retrieval processes
SERVING_PACKAGES = ("ranker_server", "retrieval_server", "analytics", "experiment_router")

# ---------------------------------------------------------------- PromQL


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan", "atan2",
}  # fmt: skip
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_]\w*\s*\)\s*$", re.S)


def promql_metric_names(expr: str) -> set[str]:
    """Metric (series) names an expression selects: identifiers that are not functions, keywords or labels."""
    match = _LABEL_VALUES.match(expr)
    if match:  # Grafana's label_values(selector, label) template query
        expr = match.group(1)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for token in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, is_call = token.group(1), token.group(2)
        if not is_call and name not in _KEYWORDS:
            names.add(name)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x=~"$y"}[$__rate_interval]))', {"a_bucket"}),
        ('label_values(b_total{model=~"$model"}, variant)', {"b_total"}),
        ("sum(rate(c_total[5m])) / ignoring(variant) group_left sum(d)", {"c_total", "d"}),
        ("histogram_quantile(0.99, e_bucket) or vector(0)", {"e_bucket"}),
        ("f == 1", {"f"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def _strip_literals(expr: str) -> str:
    """``expr`` without string literals (matcher values, Grafana variables in them) and range selectors."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return re.sub(r"\[[^\]]*\]", "", expr)


def _balanced(expr: str, start: int, step: int) -> str:
    """The parenthesised text starting at expr[start] ("(" for step 1, ")" for step -1), brackets included."""
    depth, i = 0, start
    while 0 <= i < len(expr):
        depth += {"(": step, ")": -step}.get(expr[i], 0)
        if depth == 0:
            return expr[min(start, i) : max(start, i) + 1]
        i += step
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


@dataclass(frozen=True)
class LabelUse:
    """A label an expression relies on, and the series it must be on: ``every`` of them, or at least one."""

    label: str
    series: frozenset[str]
    every: bool
    what: str


def promql_label_uses(expr: str) -> list[LabelUse]:
    """Labels an expression uses: of matchers (on their selector's series), of ``by (...)`` (on every series
    its aggregation reads), of ``without``/``on``/``ignoring``/``group_left``/``group_right`` (on some series)
    and of label_values()."""
    uses = []
    match = _LABEL_VALUES.match(expr)
    if match:
        label = re.search(r",\s*([A-Za-z_]\w*)\s*\)\s*$", expr).group(1)
        uses.append(LabelUse(label, frozenset(promql_metric_names(match.group(1))), True, "label_values"))
        expr = match.group(1)
    expr = _strip_literals(expr)
    for selector in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        for label in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", selector.group(2)):
            if label != "__name__":
                uses.append(LabelUse(label, frozenset({selector.group(1)}), True, "matcher"))
    for clause in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels = [label.strip() for label in clause.group(2).split(",") if label.strip()]
        scope = expr
        if clause.group(1) in ("by", "without"):
            rest = expr[clause.end() :]
            after = clause.end() + len(rest) - len(rest.lstrip())
            if after < len(expr) and expr[after] == "(":  # sum by (x) (...)
                scope = _balanced(expr, after, 1)
            else:  # sum(...) by (x)
                scope = _balanced(expr, len(expr[: clause.start()].rstrip()) - 1, -1)
        series = frozenset(promql_metric_names(scope))
        uses += [LabelUse(label, series, clause.group(1) == "by", clause.group(1)) for label in labels]
    return uses


@pytest.mark.parametrize(
    ("expr", "uses"),
    [
        (
            'sum by (le, m) (rate(a_bucket{x=~"$y"}[1m])) / sum(b)',
            {("x", "a_bucket", True), ("le", "a_bucket", True), ("m", "a_bucket", True)},
        ),
        ("sum(c) by (m) / ignoring(v) group_left d", {("m", "c", True), ("v", "c d", False)}),
        ("label_values(e{f=\"g\"}, h)", {("h", "e", True), ("f", "e", True)}),
    ],
)
def test_promql_label_uses(expr: str, uses: set[tuple[str, str, bool]]) -> None:
    assert {(u.label, " ".join(sorted(u.series)), u.every) for u in promql_label_uses(expr)} == uses


_RATE_FUNCTIONS = ("rate", "irate", "increase", "resets")


def promql_call_arguments(expr: str, function: str) -> list[str]:
    """The argument text of every call of ``function`` in ``expr`` (string literals blanked)."""
    expr = _strip_literals(expr)
    return [
        _balanced(expr, call.end() - 1, 1)[1:-1] for call in re.finditer(rf"(?<![\w:]){function}\s*\(", expr)
    ]


def promql_type_errors(expr: str, kinds: dict[str, str]) -> list[str]:
    """Functions applied to series of the wrong type: rate() and friends of a gauge (a meaningless, mostly
    negative-reset-corrected rate), histogram_quantile() of anything but ``_bucket`` series aggregated by ``le``."""
    errors = []
    for function in _RATE_FUNCTIONS:
        for argument in promql_call_arguments(expr, function):
            errors += [
                f"{function}() of {name}, a {kinds[name]}"
                for name in sorted(promql_metric_names(argument))
                if kinds.get(name, "counter") not in ("counter", "bucket")
            ]
    for argument in promql_call_arguments(expr, "histogram_quantile"):
        series = promql_metric_names(argument)
        errors += [
            f"histogram_quantile() of {name}, not a histogram's _bucket"
            for name in sorted(series)
            if kinds.get(name, "bucket") != "bucket"
        ]
        for clause in re.finditer(r"\b(by|without)\s*\(([^)]*)\)", argument):
            labels = {label.strip() for label in clause.group(2).split(",")}
            if ("le" in labels) != (clause.group(1) == "by"):
                errors.append(f"histogram_quantile() of an aggregation that drops le: {clause.group(0)}")
    return errors


@pytest.mark.parametrize(
    ("expr", "errors"),
    [
        ("sum(rate(c_total[1m])) / sum(rate(h_sum[1m]))", []),
        ("histogram_quantile(0.9, sum by (le, m) (rate(h_bucket[1m])))", []),
        ("sum(rate(g[1m]))", ["rate() of g, a gauge"]),
        ("increase(h_bucket[1h]) + irate(g[1m])", ["irate() of g, a gauge"]),
        (
            "histogram_quantile(0.5, rate(h_sum[1m]))",
            ["histogram_quantile() of h_sum, not a histogram's _bucket"],
        ),
        (
            "histogram_quantile(0.5, sum by (m) (rate(h_bucket[1m])))",
            ["histogram_quantile() of an aggregation that drops le: by (m)"],
        ),
    ],
)
def test_promql_type_errors(expr: str, errors: list[str]) -> None:
    kinds = {"c_total": "counter", "h_sum": "counter", "h_bucket": "bucket", "g": "gauge"}
    assert promql_type_errors(expr, kinds) == errors


Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""The samples of one target's /metrics: (series name, labels) -> value."""


def parse_scrape(text: str) -> Scrape:
    """The samples of a Prometheus text exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


_SUM_OF_RATE = re.compile(
    r"sum\s*\(\s*rate\s*\(\s*([A-Za-z_:][\w:]*)\s*(?:\{([^}]*)\})?\s*\[[^\]]*\]\s*\)\s*\)"
    r"(?:\s*by\s*\([^)]*\))?"
)
_OR_ZERO = re.compile(r"\s+or\s+vector\(\s*0\s*\)\s*$")
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _selected(matchers: str, labels: frozenset[tuple[str, str]]) -> bool:
    """Whether a series with ``labels`` passes every matcher (values without escapes, regexes anchored)."""
    have = dict(labels)
    for label, op, value in re.findall(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
        got = have.get(label, "")
        hit = re.fullmatch(value, got) is not None if op in ("=~", "!~") else got == value
        if hit != (op in ("=", "=~")):
            return False
    return True


def _increase(name: str, matchers: str, before: Scrape, after: Scrape) -> float:
    """Summed increase of the counter series ``name{matchers}`` between two scrapes, a series new in ``after``
    counting from 0; NaN when none is selected (PromQL's sum over nothing is empty)."""
    selected = [(key, n) for key, n in after.items() if key[0] == name and _selected(matchers, key[1])]
    return sum(n - before.get(key, 0.0) for key, n in selected) if selected else math.nan


def _evaluate(node: ast.AST, terms: list[float]) -> float:
    if isinstance(node, ast.Name) and re.fullmatch(r"t\d+", node.id):
        return terms[int(node.id[1:])]
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        right = _evaluate(node.right, terms)
        return _evaluate(node.left, terms) / right if right else math.nan
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        return _ARITHMETIC[type(node.op)](_evaluate(node.left, terms), _evaluate(node.right, terms))
    raise AssertionError(f"promql_increase cannot evaluate {ast.unparse(node)!r}")


def promql_increase(expr: str, before: Scrape, after: Scrape) -> float:
    """What ``expr`` gives between two scrapes of one target, times the interval: for a requests/s panel, the
    requests it counts. It evaluates sums of rate() of counters (grouping dropped: one target is one group),
    ``+ - * /`` between them and a trailing ``or vector(0)``; Grafana's ``$variables`` take their All value
    (``.*``). NaN: the expression selects no series."""
    expr = re.sub(r"\$\w+", ".*", expr)
    or_zero = _OR_ZERO.search(expr)
    expr = expr[: or_zero.start()] if or_zero else expr
    terms: list[float] = []

    def term(match: re.Match[str]) -> str:
        terms.append(_increase(match.group(1), match.group(2) or "", before, after))
        return f" t{len(terms) - 1} "

    arithmetic = _SUM_OF_RATE.sub(term, expr).strip()
    try:
        tree = ast.parse(arithmetic, mode="eval")
    except SyntaxError:
        raise AssertionError(f"promql_increase cannot evaluate {arithmetic!r}") from None
    value = _evaluate(tree.body, terms)
    return 0.0 if or_zero and math.isnan(value) else value


_SUM_BY_OF_RATE = re.compile(
    r"sum\s+by\s*\(\s*([A-Za-z_]\w*)\s*\)\s*"
    r"\(\s*rate\s*\(\s*([A-Za-z_:][\w:]*)\s*(?:\{([^}]*)\})?\s*\[[^\]]*\]\s*\)\s*\)"
)


def promql_increase_by(expr: str, before: Scrape, after: Scrape) -> dict[str, float]:
    """What ``sum by (label) (rate(counter{matchers}[...]))`` gives between two scrapes of one target, times
    the interval, for each value of ``label``: what a panel draws one line each for. Grafana's ``$variables``
    take their All value (``.*``)."""
    match = _SUM_BY_OF_RATE.fullmatch(re.sub(r"\$\w+", ".*", expr).strip())
    if match is None:
        raise AssertionError(f"promql_increase_by cannot evaluate {expr!r}")
    label, name, matchers = match.groups()
    increases: dict[str, float] = {}
    for key, n in after.items():
        if key[0] == name and _selected(matchers or "", key[1]):
            value = dict(key[1]).get(label, "")
            increases[value] = increases.get(value, 0.0) + n - before.get(key, 0.0)
    return increases


_BEFORE = """# TYPE r counter
r_total{m="a",code="OK"} 1
r_total{m="b",code="OK"} 1
"""
_AFTER = """# TYPE r counter
r_total{m="a",code="OK"} 4
r_total{m="b",code="OK"} 2
r_total{m="b",code="INTERNAL"} 2
"""


@pytest.mark.parametrize(
    ("expr", "increase"),
    [
        ("sum(rate(r_total[$__rate_interval]))", 6.0),
        ('sum(rate(r_total{m=~"$model", code!="OK"}[1m])) by (pod)', 2.0),
        ('sum(rate(r_total{code="OK"}[1m])) / (sum(rate(r_total{m="b"}[1m])) + 2)', 4 / 5),
        ('sum(rate(r_total{code="NOT_FOUND"}[1m])) or vector(0)', 0.0),
        ('sum(rate(r_total{code=~"NOT_FOUND|UNKNOWN"}[1m]))', math.nan),
        ('sum(rate(r_total{m!~"a|b"}[1m])) - sum(rate(r_total{m="a"}[1m]))', math.nan),
    ],
)
def test_promql_increase(expr: str, increase: float) -> None:
    got = promql_increase(expr, parse_scrape(_BEFORE), parse_scrape(_AFTER))
    assert got == pytest.approx(increase, nan_ok=True)


@pytest.mark.parametrize(
    ("expr", "increases"),
    [
        ("sum by (m) (rate(r_total[$__rate_interval]))", {"a": 3.0, "b": 3.0}),
        ('sum by (code) (rate(r_total{m=~"$model"}[1m]))', {"OK": 4.0, "INTERNAL": 2.0}),
        ('sum by (m) (rate(r_total{code="NOT_FOUND"}[1m]))', {}),
    ],
)
def test_promql_increase_by(expr: str, increases: dict[str, float]) -> None:
    assert promql_increase_by(expr, parse_scrape(_BEFORE), parse_scrape(_AFTER)) == increases


def test_promql_increase_by_refuses_what_it_cannot_evaluate() -> None:
    with pytest.raises(AssertionError, match="cannot evaluate"):
        promql_increase_by("sum(rate(r_total[1m])) by (m)", parse_scrape(_BEFORE), parse_scrape(_AFTER))


def test_promql_increase_refuses_what_it_cannot_evaluate() -> None:
    with pytest.raises(AssertionError, match="cannot evaluate"):
        promql_increase("sum by (m) (rate(r_total[1m]))", parse_scrape(_BEFORE), parse_scrape(_AFTER))


def panel_target(dashboard: dict, title: str, ref_id: str = "A") -> str:
    """The expression of target ``ref_id`` of the top-level panel titled ``title``."""
    [expr] = [
        target["expr"]
        for panel in dashboard["panels"]
        if panel.get("title") == title
        for target in panel.get("targets", [])
        if target.get("refId") == ref_id
    ]
    return str(expr)


def adapter_query(rule: dict, name: str) -> str:
    """The query prometheus-adapter runs for series ``name`` of ``rule``: it fills in the series, the pod's
    label matchers (left out here: one target's scrape is one pod) and the grouping by pod."""
    query = rule["metricsQuery"].replace("<<.Series>>", name).replace("<<.LabelMatchers>>", "")
    return str(query.replace("<<.GroupBy>>", "pod"))


def dashboard_queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, expression) for every panel target and every query-type template variable."""

    def walk(panels: list[dict]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            yield f"variable ${variable['name']}", query["query"] if isinstance(query, dict) else query


def dashboard_legends(dashboard: dict) -> Iterator[tuple[str, str, str]]:
    """(where, expression, legendFormat) of every panel target with a legend."""

    def walk(panels: list[dict]) -> Iterator[tuple[str, str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr") and target.get("legendFormat"):
                    where = f"panel {panel.get('title')!r} target {target.get('refId')}"
                    yield where, target["expr"], target["legendFormat"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard.get("panels", []))


# ---------------------------------------------------------------- what the servers export


def _metric_modules() -> list[str]:
    """Every module of the serving packages whose source uses prometheus_client."""
    modules = []
    for package in SERVING_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__main__.py" or "prometheus_client" not in path.read_text():
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def _sample_names(registry: CollectorRegistry) -> set[str]:
    """Series names a registry exposes, derived from each family's type (labelled metrics without children
    yet have no samples, so the names cannot be read off the samples alone)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def _registries_of(module: object) -> Iterator[CollectorRegistry]:
    """Registries a module holds, or that its classes create per instance (e.g. one per server object)."""
    for value in vars(module).values():
        if isinstance(value, CollectorRegistry):
            yield value
        elif inspect.isclass(value) and value.__module__ == module.__name__:
            try:
                instance = value()
            except TypeError:  # needs arguments: not a metrics holder
                continue
            yield from (v for v in vars(instance).values() if isinstance(v, CollectorRegistry))


def _all_registries() -> list[CollectorRegistry]:
    """The default registry and every registry the serving modules hold or create."""
    modules = _metric_modules()
    assert {m.split(".")[0] for m in modules} == set(SERVING_PACKAGES), modules
    registries = {id(REGISTRY): REGISTRY}
    for name in modules:
        registries |= {id(r): r for r in _registries_of(importlib.import_module(name))}
    return list(registries.values())


@pytest.fixture(scope="module")
def exported() -> set[str]:
    names = set()
    for registry in _all_registries():
        names |= _sample_names(registry)
    return names


# What a series is to PromQL: rate() and increase() need a counter (or a histogram's or summary's _bucket, _sum
# or _count), histogram_quantile() a histogram's _bucket series.
_SERIES_KINDS = {
    "counter": {"_total": "counter", "_created": "gauge"},
    "histogram": {"_bucket": "bucket", "_sum": "counter", "_count": "counter", "_created": "gauge"},
    "summary": {"": "gauge", "_sum": "counter", "_count": "counter", "_created": "gauge"},
}


@pytest.fixture(scope="module")
def exported_kinds() -> dict[str, str]:
    """Series name -> "counter", "bucket" or "gauge", from each family's type."""
    kinds = dict(EXTERNAL_EXPORTERS_KINDS)
    for registry in _all_registries():
        for family in registry.collect():
            suffixes = _SERIES_KINDS.get(family.type, {"": "gauge", "_info": "gauge"})
            kinds |= {family.name + suffix: kind for suffix, kind in suffixes.items()}
    return kinds


def _metrics_of(module: object) -> Iterator[MetricWrapperBase]:
    """The prometheus_client metrics a module defines, or that its classes create per instance."""
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            yield value
        elif inspect.isclass(value) and value.__module__ == module.__name__:
            try:
                instance = value()
            except TypeError:
                continue
            yield from (v for v in vars(instance).values() if isinstance(v, MetricWrapperBase))


TARGET_LABELS = frozenset({"job", "instance"})  # what Prometheus adds to every scraped series


@pytest.fixture(scope="module")
def exported_labels(exported: set[str]) -> dict[str, frozenset[str]]:
    """Label names of every series of the servers' own metrics (their label names, ``le`` on histogram
    buckets, an Enum's own name, ``quantile`` on a summary), and of the third-party exporters' series."""
    labels: dict[str, frozenset[str]] = dict(EXTERNAL_EXPORTERS_LABELS)
    for name in _metric_modules():
        for metric in _metrics_of(importlib.import_module(name)):
            own = frozenset(metric._labelnames)
            if metric._type == "counter":
                labels |= {f"{metric._name}_total": own, f"{metric._name}_created": own}
            elif metric._type == "histogram":
                labels |= {f"{metric._name}_{s}": own for s in ("sum", "count", "created")}
                labels[f"{metric._name}_bucket"] = own | {"le"}
            elif metric._type == "stateset":
                labels[metric._name] = own | {metric._name}
            elif metric._type == "summary":
                labels |= {f"{metric._name}_{s}": own for s in ("sum", "count", "created")}
                labels[metric._name] = own | {"quantile"}
            elif metric._type == "info":
                labels[f"{metric._name}_info"] = own
            else:
                labels[metric._name] = own
    ours = {n for n in exported if n.startswith(("mtrank_", "retrieval_"))}
    assert ours <= set(labels), f"no label names found for {sorted(ours - set(labels))}"
    return {name: names | TARGET_LABELS for name, names in labels.items()}


# Series from third-party exporters that deploy/ runs beside the servers; each entry names the exporter,
# and test_external_exporters_are_deployed checks that compose runs and Prometheus scrapes it.
EXTERNAL_EXPORTERS = {
    # danielqsj/kafka-exporter (also what Strimzi deploys as its Kafka Exporter): lag and committed offset per
    # group and partition.
    "kafka_consumergroup_lag": "danielqsj/kafka-exporter",
    "kafka_consumergroup_current_offset": "danielqsj/kafka-exporter",
}
EXTERNAL_EXPORTERS_LABELS = {
    name: frozenset({"consumergroup", "topic", "partition"}) for name in EXTERNAL_EXPORTERS
}
EXTERNAL_EXPORTERS_KINDS = dict.fromkeys(EXTERNAL_EXPORTERS, "gauge")


# ---------------------------------------------------------------- tests


def test_there_are_dashboards() -> None:
    assert DASHBOARDS, f"no Grafana dashboard JSON under {OBSERVABILITY}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_queried_metric_is_exported(path: Path, exported: set[str]) -> None:
    dashboard = json.loads(path.read_text())
    queries = list(dashboard_queries(dashboard))
    assert queries, f"{path.name} queries nothing"
    missing = []
    for where, expr in queries:
        names = promql_metric_names(expr)
        assert names, f"{path.name} {where}: no metric in {expr!r}"
        missing += [f"{where}: {name}" for name in sorted(names - exported - set(EXTERNAL_EXPORTERS))]
    assert not missing, (
        f"{path.name} queries metrics no server exports: {missing}; exported: {sorted(exported)}"
    )


def _label_errors(where: str, expr: str, labels: dict[str, frozenset[str]]) -> list[str]:
    errors = []
    for use in promql_label_uses(expr):
        known = [name for name in use.series if name in labels]  # unknown names: the metric-name test
        has = [name for name in known if use.label in labels[name]]
        if known and (len(has) < len(known) if use.every else not has):
            lacking = sorted(set(known) - set(has))
            errors.append(f"{where}: {use.what} label {use.label!r} is not a label of {lacking}")
    return errors


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_queried_label_exists(path: Path, exported_labels: dict[str, frozenset[str]]) -> None:
    """Matchers, aggregations and legends use labels the queried series carry: a matcher on a label a metric
    lacks selects nothing (an empty panel), ``sum by`` a missing label merges everything into one series."""
    dashboard = json.loads(path.read_text())
    errors = []
    for where, expr in dashboard_queries(dashboard):
        errors += _label_errors(where, expr, exported_labels)
    for where, expr, legend in dashboard_legends(dashboard):
        series = [n for n in promql_metric_names(expr) if n in exported_labels]
        available = frozenset().union(*(exported_labels[n] for n in series))
        errors += [
            f"{where}: legend {{{{{label}}}}} is not a label of {sorted(series)}"
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)
            if series and label not in available
        ]
    assert not errors, errors


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_applies_functions_to_series_of_their_type(
    path: Path, exported_kinds: dict[str, str]
) -> None:
    """rate() over a gauge and histogram_quantile() over anything but buckets aggregated by ``le`` draw a line
    that means nothing, without any error in Grafana."""
    dashboard = json.loads(path.read_text())
    errors = [
        f"{where}: {error}"
        for where, expr in dashboard_queries(dashboard)
        for error in promql_type_errors(expr, exported_kinds)
    ]
    assert not errors, errors


def test_prometheus_adapter_rules_read_exported_series(
    exported_labels: dict[str, frozenset[str]], exported_kinds: dict[str, str]
) -> None:
    """The custom-metrics rules the HPAs depend on select series the ranker exports, with its labels (plus the
    namespace and pod labels Kubernetes service discovery adds), name them as the HPAs ask, and their queries
    apply rate() only to counters."""
    assert ADAPTER_RULES
    pod_labels = {n: ls | {"namespace", "pod"} for n, ls in exported_labels.items()}
    for path in ADAPTER_RULES:
        for rule in yaml.safe_load(path.read_text())["rules"]["custom"]:
            names = promql_metric_names(rule["seriesQuery"])
            query = rule["seriesQuery"]
            assert names and names <= set(exported_labels), f"{path.name}: no server exports {query}"
            assert not _label_errors(path.name, rule["seriesQuery"], pod_labels)
            assert set(rule["resources"]["overrides"]) <= {"namespace", "pod"}
            assert all(re.search(rule["name"]["matches"], name) for name in names), rule["name"]
            for name in names:
                query = adapter_query(rule, name)
                assert not promql_type_errors(query, exported_kinds), (path.name, query)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_covers_the_serving_signals(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    queried = " ".join(expr for _, expr in dashboard_queries(dashboard))
    titles = " ".join(p.get("title", "") for p in dashboard["panels"]).lower()
    for signal in ("requests/s", "latency", "errors", "batch size", "traffic per variant", "exposure", "lag"):
        assert signal in titles, f"{path.name}: no panel about {signal!r}"
    assert "histogram_quantile(0.5," in queried and "histogram_quantile(0.99," in queried
    datasources = {
        json.dumps(t["datasource"], sort_keys=True) for p in dashboard["panels"] for t in p.get("targets", [])
    }
    provisioned = yaml.safe_load(
        (OBSERVABILITY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uids = {d["uid"] for d in provisioned["datasources"]}
    assert {json.loads(d)["uid"] for d in datasources} <= uids, (
        "a panel uses a datasource that is not provisioned"
    )


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provider = yaml.safe_load((OBSERVABILITY / "grafana/provisioning/dashboards/mtrank.yml").read_text())
    paths = {p["options"]["path"] for p in provider["providers"]}
    assert paths == {"/var/lib/grafana/dashboards"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids)), "dashboard uids must be unique"


def test_external_exporters_are_deployed() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    scrape = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    targets = {
        t.split(":")[0]
        for job in scrape["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    for metric, image in EXTERNAL_EXPORTERS.items():
        services = [n for n, s in compose["services"].items() if s["image"].split(":")[0] == image]
        assert services, f"{metric}: no compose service runs {image}"
        assert set(services) & targets, f"{metric}: Prometheus does not scrape {image}"


def test_retrieval_metrics_endpoint_serves_its_experiment_config_metrics(tmp_path: Path) -> None:
    """``retrieval_server --experiments`` runs experiment_router's ConfigWatcher, which counts reloads and
    exports the config in force in the default registry; the retrieval endpoint serves its own registry, and
    left both out (a rejected config there was invisible to Prometheus)."""
    from prometheus_client.parser import text_string_to_metric_families

    from experiment_router.reload import ConfigWatcher
    from retrieval_server.metrics import RetrievalMetrics

    config = tmp_path / "experiments.yaml"
    config.write_text((ROOT / "deploy" / "config" / "experiments.yaml").read_text())
    ConfigWatcher(config)  # what retrieval_server/__main__.py builds for --experiments
    metrics = RetrievalMetrics()
    port = metrics.serve(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        metrics.close()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert "mtrank_router_config_reload" in families, sorted(families)
    live = [sample.labels for sample in families["mtrank_router_config_info"].samples]
    assert {"path": str(config), "sha256": hashlib.sha256(config.read_bytes()).hexdigest()} in live, live
