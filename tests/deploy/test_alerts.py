"""The Prometheus alerting rules, deploy/observability/alerts.yml: compose's Prometheus loads them, Kubernetes
users get the same ones, each says what to do, and every expression reads series the servers export, with
their labels and types (the checks the dashboard's queries pass, test_observability.py). The rules that the
two-scrape evaluator can compute are driven: a real server is put into the failure, /metrics scraped before
and after, and the rule must fire; on healthy traffic (client errors included) it must not.
"""

from __future__ import annotations

import ast
import asyncio
import math
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc import aio
from prometheus_client import REGISTRY

from analytics.events.producer import EventProducer
from analytics.kafka.broker import EmbeddedBroker, free_port
from grpc_serving.metrics_endpoint import serve_metrics
from proto import events_pb2, ranking_pb2, ranking_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from tests.analytics.conftest import kafka_broker as kafka_broker  # noqa: F401 (fixture)
from tests.deploy.test_observability import (  # noqa: F401 (exported*: fixtures)
    _SUM_OF_RATE,
    EXTERNAL_EXPORTERS,
    OBSERVABILITY,
    ROOT,
    Scrape,
    _label_errors,
    _selected,
    exported,
    exported_kinds,
    exported_labels,
    parse_scrape,
    promql_increase,
    promql_label_uses,
    promql_metric_names,
    promql_type_errors,
)
from tests.ranker_server.conftest import (  # noqa: F401 (repository: fixture)
    FakePayload,
    FakeRouter,
    MutableSource,
    code_of,
    make_settings,
    repository,
)
from tests.retrieval_server.conftest import built_repository as built_repository  # noqa: F401 (fixture)

ALERTS = OBSERVABILITY / "alerts.yml"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus.yml"
COMPOSE = ROOT / "deploy" / "compose.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "alerts" / "prometheus-rule.yaml"
SEVERITIES = ("critical", "warning")
# Series Prometheus makes itself for every target (the rules watch `up`), with the labels it gives them.
PROMETHEUS_SERIES = {"up": frozenset({"job", "instance"})}
# The labels Kubernetes service discovery adds where the pods are scraped (the PrometheusRule's setting, as
# for the prometheus-adapter rules): compose's series lack them, which groups everything in one namespace.
K8S_LABELS = frozenset({"namespace", "pod"})


def load_rules(path: Path = ALERTS) -> list[dict]:
    """Every rule of a Prometheus rule file, in order."""
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def alert(name: str) -> dict:
    [rule] = [rule for rule in load_rules() if rule.get("alert") == name]
    return rule


def series_of(scrape: Scrape, **labels: str) -> Scrape:
    """The series of ``scrape`` with these label values: one server's gauges, where the servers run before
    in this process left theirs."""
    return {key: value for key, value in scrape.items() if labels.items() <= dict(key[1]).items()}


RULES = load_rules()

# ---------------------------------------------------------------- evaluating an alert between two scrapes

_THRESHOLD = re.compile(r"^(?P<lhs>.*?)\s*>\s*(?P<threshold>\d+(?:\.\d+)?)\s*$", re.S)
_GAUGE_EQUALS = re.compile(
    r"^(?:max\s+by\s*\((?P<by>[^)]*)\)\s*\(\s*)?"  # optionally the most of each group
    r"(?P<name>[A-Za-z_:][\w:]*)\s*(?:\{(?P<matchers>[^}]*)\})?\s*(?(by)\))"
    r"\s*==\s*(?P<value>\d+(?:\.\d+)?)$"
)
# ``increase(c[w]) > 0 or c unless c offset w``: any increase, a series that appeared within w counting from 0
# (alerts.yml's header says why): between two scrapes, what rate() is evaluated as here.
_INCREASE_OR_NEW = re.compile(
    r"increase\s*\(\s*(?P<series>(?P<name>[A-Za-z_:][\w:]*)\s*(?:\{[^}]*\})?)\s*\[(?P<window>[^\]]+)\]\s*\)"
    r"\s*>\s*0\s+or\s+(?P=series)\s+unless\s+(?P=name)\s+offset\s+(?P=window)"
)


def promql_alert_fires(expr: str, before: Scrape, after: Scrape) -> bool:
    """Whether ``<sums of rate() arithmetic> > threshold`` selects anything between two scrapes of one target
    (one group), or ``gauge{matchers} == value`` (or ``max by (labels) (gauge{matchers}) == value``) anything
    in ``after`` (what the gauge reads then; ``for`` is not evaluated). The time between the scrapes is not
    known, so only what does not depend on it is evaluated: a ratio of rates against any threshold, anything
    else against 0. An expression that selects no series does not fire."""
    expr = _INCREASE_OR_NEW.sub(r"rate(\g<series>[\g<window>])", expr)
    gauge = _GAUGE_EQUALS.match(expr.strip())
    if gauge is not None:
        name, matchers, wanted = gauge["name"], gauge["matchers"] or "", float(gauge["value"])
        selected = [
            (dict(key[1]), value)
            for key, value in after.items()
            if key[0] == name and _selected(matchers, key[1])
        ]
        if gauge["by"] is None:
            return any(value == wanted for _, value in selected)
        by = [label.strip() for label in gauge["by"].split(",") if label.strip()]
        groups: dict[tuple[str, ...], float] = {}
        for labels, value in selected:
            group = tuple(labels.get(label, "") for label in by)
            groups[group] = max(groups.get(group, value), value)
        return wanted in groups.values()
    match = _THRESHOLD.match(expr.strip())
    if match is None:
        raise AssertionError(f"promql_alert_fires cannot evaluate {expr!r}")
    lhs, threshold = match["lhs"], float(match["threshold"])
    if threshold:
        try:
            tree = ast.parse(_SUM_OF_RATE.sub(" t ", lhs).strip(), mode="eval")
        except SyntaxError:
            raise AssertionError(f"promql_alert_fires cannot evaluate {expr!r}") from None
        if not (isinstance(tree.body, ast.BinOp) and isinstance(tree.body.op, ast.Div)):
            raise AssertionError(
                f"promql_alert_fires: {expr!r} compares a rate, not a ratio, with {threshold}"
            )
    value = promql_increase(lhs, before, after)
    return not math.isnan(value) and value > threshold


_BEFORE = parse_scrape('# TYPE r counter\nr_total{code="OK"} 10\n')
_AFTER = parse_scrape('# TYPE r counter\nr_total{code="OK"} 19\nr_total{code="UNAVAILABLE"} 1\n')
_ANY_INCREASE = (
    'sum(increase(r_total{{code="{0}"}}[5m]) > 0 or r_total{{code="{0}"}} unless r_total offset 5m) > 0'
)


@pytest.mark.parametrize(
    ("expr", "fires"),
    [
        ('sum(rate(r_total{code!="OK"}[5m])) by (job) / sum(rate(r_total[5m])) by (job) > 0.05', True),
        ('sum(rate(r_total{code!="OK"}[5m])) by (job) / sum(rate(r_total[5m])) by (job) > 0.2', False),
        ('sum(rate(r_total{code="UNAVAILABLE"}[15m])) by (job, instance) > 0', True),
        ('sum(rate(r_total{code="INTERNAL"}[15m])) by (job, instance) > 0', False),  # no such series
        (_ANY_INCREASE.format("UNAVAILABLE"), True),  # new in after: counted from 0
        (_ANY_INCREASE.format("OK"), True),
        (_ANY_INCREASE.format("INTERNAL"), False),  # no such series
        ('r_total{code="UNAVAILABLE"} == 1', True),  # what it reads after
        ('r_total{code!="OK"} == 0', False),
        ('r_total{code="INTERNAL"} == 0', False),  # no such series
        ('max by (code) (r_total{code=~"OK|UNAVAILABLE"}) == 1', True),  # UNAVAILABLE's group
        ("max by () (r_total) == 1", False),  # one group, whose most is OK's 19
        ("max by (job) (r_total) == 19", True),
    ],
)
def test_promql_alert_fires(expr: str, fires: bool) -> None:
    assert promql_alert_fires(expr, _BEFORE, _AFTER) is fires


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(r_total[5m])) > 0.5",  # a rate per second: needs the scrapes' interval
        'r_total == 0 or r_total{code="OK"} == 0',
        "r_total != 0",
        'sum(rate(r_total[5m])) by (job) > 0 unless sum(rate(r_total{code="OK"}[5m])) by (job) > 0',
        "histogram_quantile(0.99, sum(rate(h_bucket[5m])) by (le)) > 0.25",
    ],
)
def test_promql_alert_fires_refuses_what_it_cannot_evaluate(expr: str) -> None:
    with pytest.raises(AssertionError, match="cannot evaluate|not a ratio"):
        promql_alert_fires(expr, _BEFORE, _AFTER)


def evaluable(rule: dict) -> bool:
    try:
        promql_alert_fires(rule["expr"], {}, {})
    except AssertionError:
        return False
    return True


# ---------------------------------------------------------------- the files


def test_compose_prometheus_loads_the_rules() -> None:
    """prometheus.yml names the rule file relative to itself; compose mounts it beside the config there."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [ALERTS.name]
    prometheus = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    [config_flag] = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    config_dir = Path(config_flag.partition("=")[2]).parent
    mounts = {}
    for volume in prometheus["volumes"]:
        source, _, target = volume.partition(":")
        mounts[target.partition(":")[0]] = (COMPOSE.parent / source).resolve()
    for rule_file in config["rule_files"]:
        assert mounts.get(str(config_dir / rule_file)) == ALERTS.resolve(), f"{rule_file} is not mounted"


def test_kubernetes_gets_the_same_rules() -> None:
    """The PrometheusRule for the Prometheus Operator carries alerts.yml's groups unchanged."""
    manifest = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert manifest["metadata"]["namespace"] == "mtrank"
    assert manifest["spec"] == yaml.safe_load(ALERTS.read_text()), (
        f"{PROMETHEUS_RULE.name}: spec differs from {ALERTS.name}; copy its groups (indented by two spaces)"
    )


def test_every_alert_says_how_bad_it_is_and_what_to_do() -> None:
    names = [rule.get("alert") for rule in RULES]
    assert all(names) and len(names) == len(set(names)), names
    for rule in RULES:
        name = rule["alert"]
        assert re.fullmatch(r"Mtrank[A-Z]\w+", name), name
        assert rule.keys() <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m")), f"{name}: for {rule.get('for')!r}"
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description"} <= rule["annotations"].keys(), name
        assert len(rule["annotations"]["description"]) > 80, f"{name}: say what to do"


def test_every_alert_justifies_its_threshold_in_a_comment() -> None:
    """Each ``- alert:`` line comes right after a comment that says why its threshold and ``for`` are so."""
    lines = ALERTS.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("- alert:"):
            assert lines[i - 1].lstrip().startswith("#"), (
                f"{ALERTS.name}:{i + 1}: no comment above {line.strip()}"
            )


def alert_problems(
    rule: dict, names: set[str], labels: dict[str, frozenset[str]], kinds: dict[str, str]
) -> list[str]:
    """What is wrong with an alert's expression and annotations: series no server exports, labels its
    series lack (in matchers, groupings and the annotations' ``$labels``), functions on the wrong types."""
    name, expr = rule["alert"], rule["expr"]
    known = names | set(EXTERNAL_EXPORTERS) | set(PROMETHEUS_SERIES)
    series = promql_metric_names(expr)
    problems = [f"{name}: no metric in {expr!r}"] if not series else []
    problems += [f"{name}: {metric} is exported by no server" for metric in sorted(series - known)]
    problems += _label_errors(name, expr, labels)
    problems += [f"{name}: {error}" for error in promql_type_errors(expr, kinds)]
    grouped = {use.label for use in promql_label_uses(expr) if use.what == "by"}
    available = grouped or frozenset().union(*(labels.get(metric, frozenset()) for metric in series))
    for label in re.findall(r"\$labels\.(\w+)", " ".join(rule.get("annotations", {}).values())):
        if label not in available:
            problems.append(
                f"{name}: annotation label {label!r} is not a label of the alert's {sorted(available)}"
            )
    return problems


@pytest.fixture(scope="module")
def rule_labels(
    exported_labels: dict[str, frozenset[str]],  # noqa: F811
) -> dict[str, frozenset[str]]:
    """Label names of every series the rules may read, with the target labels of Prometheus and Kubernetes."""
    known = {
        **exported_labels,
        **{name: labels | {"job", "instance"} for name, labels in PROMETHEUS_SERIES.items()},
    }
    return {name: labels | K8S_LABELS for name, labels in known.items()}


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule["alert"])
def test_every_alert_reads_exported_series_with_their_labels_and_types(
    rule: dict,
    exported: set[str],  # noqa: F811
    rule_labels: dict[str, frozenset[str]],
    exported_kinds: dict[str, str],  # noqa: F811
) -> None:
    """A rule over a metric or label that does not exist selects nothing and never fires: an outage that no
    alert reports."""
    assert not alert_problems(rule, exported, rule_labels, exported_kinds)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("mtrank_requests_total{", "mtrank_request_total{", "mtrank_request_total is exported by no server"),
        (
            '{code!~"OK|',
            '{status!~"OK|',
            "matcher label 'status' is not a label of ['mtrank_requests_total']",
        ),
        ("by (namespace, job)", "by (namespace, model)", "by label 'model' is not a label"),
        ("sum(rate(mtrank_requests_total", "sum(irate(mtrank_exposure_buffer_events", "irate() of"),
    ],
)
def test_the_checks_catch_a_misspelt_metric_or_label(
    old: str,
    new: str,
    problem: str,
    exported: set[str],  # noqa: F811
    rule_labels: dict[str, frozenset[str]],
    exported_kinds: dict[str, str],  # noqa: F811
) -> None:
    rule = alert("MtrankRankerErrorRatioHigh")
    assert old in rule["expr"]
    broken = {**rule, "expr": rule["expr"].replace(old, new, 1)}
    assert any(problem in p for p in alert_problems(broken, exported, rule_labels, exported_kinds))
    annotated = {**rule, "annotations": {"summary": "{{ $labels.pod_name }} fails"}}
    assert alert_problems(annotated, exported, rule_labels, exported_kinds) == [
        "MtrankRankerErrorRatioHigh: annotation label 'pod_name' is not a label of the alert's "
        "['job', 'namespace']"
    ]


def test_target_down_watches_every_compose_scrape_job() -> None:
    """Every job compose's Prometheus scrapes (but its own), and no target of an optional profile: those are
    down whenever the profile is not started."""
    expr = alert("MtrankTargetDown")["expr"]
    [watched] = re.findall(r'up\{job=~"([^"]*)"', expr)
    [unwatched] = re.findall(r'instance!~"([^"]*)"', expr)
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    jobs = {job["job_name"] for job in scrape} - {"prometheus"}
    assert set(watched.split("|")) == jobs
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for job in scrape:
        for target in (t for config in job["static_configs"] for t in config["targets"]):
            optional = "profiles" in services.get(target.partition(":")[0], {})
            assert optional == bool(re.fullmatch(unwatched, target)), f"{job['job_name']} target {target}"


# ---------------------------------------------------------------- rules driven by real servers

# The rules promql_alert_fires can compute, each driven by a test below; the others (`or`, quantiles,
# `unless`) are checked statically above only.
DRIVEN = {
    "MtrankRetrievalUnreachableFromRanker": "test_retrieval_unreachable_fires_only_for_a_ranker_dialling_it",
    "MtrankRankerErrorRatioHigh": "test_ranker_error_ratio_fires_when_retrieval_is_down",
    "MtrankRetrievalErrorRatioHigh": "test_retrieval_error_ratio_fires_while_no_model_is_loaded",
    "MtrankRankerOnCpuInsteadOfCuda": "test_cpu_instead_of_cuda_fires_where_cuda_was_asked_for",
    "MtrankModelVersionFailed": "test_model_load_failed_fires_for_a_broken_version",
    "MtrankModelLoadFailed": "test_model_load_failed_fires_for_a_broken_version",
    "MtrankExperimentConfigRejected": "test_experiment_config_alerts_fire_for_a_rejected_or_waiting_config",
    "MtrankExperimentConfigPending": "test_experiment_config_alerts_fire_for_a_rejected_or_waiting_config",
    "MtrankExposuresDropped": "test_event_alerts_fire_when_kafka_is_away",
    "MtrankEventsDropped": "test_event_alerts_fire_when_kafka_is_away",
    "MtrankEventsJournalled": "test_event_alerts_fire_when_kafka_is_away",
    "MtrankEventsDeadLettered": "test_event_alerts_fire_when_kafka_is_away",
    "MtrankExperimentSampleRatioMismatch": "test_sample_ratio_mismatch_fires_for_a_broken_split_only",
}
# Computable, not driven: each needs what no test here can make in seconds.
NOT_DRIVEN = {
    "MtrankAnalyticsEventsRejected": "records only a foreign producer writes, read by a running consumer",
    "MtrankAnalyticsRecordsExpired": "Kafka deleting records by retention",
    "MtrankAnalyticsBrokerUnreachable": "a consumer polling a broker that went away",
}


def test_every_rule_the_evaluator_computes_is_driven() -> None:
    assert {rule["alert"] for rule in RULES if evaluable(rule)} == DRIVEN.keys() | NOT_DRIVEN.keys()
    assert set(DRIVEN.values()) <= set(globals()), "DRIVEN names a test that does not exist"


@pytest.fixture(scope="module")
def scrape_default_registry() -> Iterator[Callable[[], Scrape]]:
    """Scrapes of a real /metrics endpoint over the process-wide registry: what the ranker, the outcome
    reporter and the analytics consumer serve (``--metrics-port``)."""
    server = serve_metrics(0, "127.0.0.1")
    try:
        yield lambda: scrape(server.server_port)
    finally:
        server.shutdown()
        server.server_close()


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse_scrape(response.read().decode())


def fires(name: str, before: Scrape, after: Scrape) -> bool:
    return promql_alert_fires(alert(name)["expr"], before, after)


async def _rank_failing(
    stub: ranking_pb2_grpc.RankerStub, request: ranking_pb2.RankRequest, **kw: Any
) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as failed:
        await stub.Rank(request, timeout=10, **kw)
    return code_of(failed.value)


@pytest.mark.integration
async def test_ranker_error_ratio_fires_when_retrieval_is_down(
    repository: Path,  # noqa: F811
    tmp_path: Path,
    scrape_default_registry: Callable[[], Scrape],
) -> None:
    """Requests without candidates fail UNAVAILABLE while retrieval is down: 2 of 6 calls. Bad tokens and
    invalid requests beside successes are the clients' errors: no alert."""
    from ranker_server.app import running_server

    token = tmp_path / "token"
    token.write_text("s3cret\n")
    good = (("authorization", "Bearer s3cret"),)
    settings = make_settings(repository, auth_token_file=token, retrieval=f"127.0.0.1:{free_port()}")
    with_candidates = ranking_pb2.RankRequest(user_id="alert-1", candidate_ids=[1000, 1001, 1002])
    async with running_server(settings, MutableSource(FakeRouter())) as server:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ranking_pb2_grpc.RankerStub(channel)
            healthy = scrape_default_registry()
            for _ in range(4):
                await stub.Rank(with_candidates, metadata=good, timeout=10)
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                assert (
                    await _rank_failing(stub, with_candidates, metadata=metadata)
                    == grpc.StatusCode.UNAUTHENTICATED
                )
            no_user = ranking_pb2.RankRequest(candidate_ids=[1000])
            assert await _rank_failing(stub, no_user, metadata=good) == grpc.StatusCode.INVALID_ARGUMENT
            failing = scrape_default_registry()
            for _ in range(4):
                await stub.Rank(with_candidates, metadata=good, timeout=10)
            for _ in range(2):
                without = ranking_pb2.RankRequest(user_id="alert-2")
                assert await _rank_failing(stub, without, metadata=good) == grpc.StatusCode.UNAVAILABLE
            after = scrape_default_registry()
    assert not fires("MtrankRankerErrorRatioHigh", healthy, failing)
    assert fires("MtrankRankerErrorRatioHigh", failing, after)
    ratio = alert("MtrankRankerErrorRatioHigh")["expr"].rpartition(">")[0]
    assert promql_increase(ratio, failing, after) == pytest.approx(2 / 6)


@pytest.mark.integration
async def test_retrieval_error_ratio_fires_while_no_model_is_loaded(
    built_repository: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A retrieval server without a loaded model answers UNAVAILABLE; once it has one, successes and refused
    requests (k out of range: INVALID_ARGUMENT) raise no alert."""
    from retrieval_server.model_repository import ModelRepository
    from retrieval_server.server import RetrievalServer

    root = tmp_path / "repo"
    shutil.copytree(built_repository, root)
    server = RetrievalServer(ModelRepository(root), port=0, metrics_port=0, max_k=100)
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = retrieval_pb2_grpc.RetrieverStub(channel)
            request = retrieval_pb2.RetrieveRequest(user_id="5", k=5)
            before = scrape(server.metrics_port)
            for _ in range(3):
                with pytest.raises(aio.AioRpcError) as failed:
                    await stub.Retrieve(request, timeout=10)
                assert code_of(failed.value) == grpc.StatusCode.UNAVAILABLE
            unloaded = scrape(server.metrics_port)
            await server.reload("ssmtl", "1", default=True)
            for _ in range(5):
                assert len((await stub.Retrieve(request, timeout=10)).candidate_ids) == 5
            for k in (0, 101):
                with pytest.raises(aio.AioRpcError) as refused:
                    await stub.Retrieve(retrieval_pb2.RetrieveRequest(user_id="5", k=k), timeout=10)
                assert code_of(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
            loaded = scrape(server.metrics_port)
    finally:
        await server.stop(0.5)
    assert fires("MtrankRetrievalErrorRatioHigh", before, unloaded)
    assert not fires("MtrankRetrievalErrorRatioHigh", unloaded, loaded)


@pytest.mark.integration
async def test_model_load_failed_fires_for_a_broken_version(
    repository: Path,  # noqa: F811
    tmp_path: Path,
    scrape_default_registry: Callable[[], Scrape],
) -> None:
    """A broken republish of the version in service is a failed load, but the version serves on (its old
    files), so it is not failed; a new version whose golden outputs do not match is refused (the previous
    snapshot keeps serving) and failed; a good new version loads without an alert."""
    from ranker_server.exposure import MemorySink
    from ranker_server.server import RankerServer
    from tests.ranker_server.rank_packages import build_package

    shutil.copytree(repository / "tiny", tmp_path / "tiny")
    source = MutableSource(FakeRouter(variants=(("control", FakePayload("tiny", "1")),)))
    server = RankerServer(make_settings(tmp_path, poll_interval_s=3600), source, MemorySink())
    await server.start()
    try:
        before = scrape_default_registry()
        build_package(tmp_path, "tiny", "1", seed=5, corrupt_golden=True)
        assert await server.repository.refresh()
        republished = scrape_default_registry()
        build_package(tmp_path, "tiny", "7", seed=7, corrupt_golden=True)
        source.current = FakeRouter(variants=(("control", FakePayload("tiny", "7")),))
        assert not await server.repository.refresh()
        broken = scrape_default_registry()
        build_package(tmp_path, "tiny", "8", seed=8)
        source.current = FakeRouter(variants=(("control", FakePayload("tiny", "8")),))
        assert await server.repository.refresh()
        good = scrape_default_registry()
    finally:
        await server.stop(0)
    assert fires("MtrankModelLoadFailed", before, republished)
    assert fires("MtrankModelLoadFailed", republished, broken)
    assert not fires("MtrankModelLoadFailed", broken, good)
    v1, v7 = ({"model": "tiny", "version": v} for v in ("1", "7"))
    ready = {**v1, "mtrank_model_load_state": "ready"}
    assert republished[("mtrank_model_load_state", frozenset(ready.items()))] == 1  # it read `loading`
    assert not fires("MtrankModelVersionFailed", {}, series_of(republished, **v1))
    assert not fires("MtrankModelVersionFailed", {}, series_of(before, **v7))
    assert fires("MtrankModelVersionFailed", {}, series_of(broken, **v7))


@pytest.mark.integration
async def test_retrieval_unreachable_fires_only_for_a_ranker_dialling_it(
    repository: Path,  # noqa: F811
    scrape_default_registry: Callable[[], Scrape],
) -> None:
    """A ranker run without --retrieval exported ``mtrank_retrieval_up 0``, as if retrieval were down; one
    whose retrieval does not answer fires, and no longer once it has stopped (and with it its probes)."""
    from ranker_server.app import running_server

    async with running_server(make_settings(repository), MutableSource(FakeRouter())):
        alone = scrape_default_registry()
    assert not fires("MtrankRetrievalUnreachableFromRanker", {}, alone)
    down = f"127.0.0.1:{free_port()}"
    settings = make_settings(repository, retrieval=down, retrieval_probe_interval_s=0.1)
    async with running_server(settings, MutableSource(FakeRouter())):
        for _ in range(200):
            if REGISTRY.get_sample_value("mtrank_retrieval_up", {"target": down}) is not None:
                break
            await asyncio.sleep(0.05)
        failing = scrape_default_registry()
    assert fires("MtrankRetrievalUnreachableFromRanker", {}, series_of(failing, target=down))
    assert not fires("MtrankRetrievalUnreachableFromRanker", {}, scrape_default_registry())


@pytest.mark.integration
async def test_cpu_instead_of_cuda_fires_where_cuda_was_asked_for(
    repository: Path,  # noqa: F811
    scrape_default_registry: Callable[[], Scrape],
) -> None:
    """A ranker asking for the CPU only (the CPU image's onnxruntime offers nothing else) raises no alert;
    one asking for CUDA (the default providers; onnxruntime-gpu, pyproject.toml, offers it) fires when it
    got the CPU, as on a machine without a usable GPU, and not where it got CUDA. No job or instance names
    the ranker."""
    from ranker_server.app import running_server
    from ranker_server.config import RuntimeSettings

    cpu_only = RuntimeSettings(providers=("CPUExecutionProvider",))
    for runtime, asks_cuda in ((cpu_only, False), (RuntimeSettings(), True)):
        settings = make_settings(repository, runtime=runtime)
        async with running_server(settings, MutableSource(FakeRouter())) as server:
            scrape = scrape_default_registry()
            assert server.repository is not None
            on_gpu = {key: model.runner.on_gpu for key, model in server.repository.snapshot.models.items()}
        for (model, version), gpu in on_gpu.items():
            own = series_of(scrape, model=model, version=version)
            assert fires("MtrankRankerOnCpuInsteadOfCuda", {}, own) is (asks_cuda and not gpu), own


def test_experiment_config_alerts_fire_for_a_rejected_or_waiting_config(
    tmp_path: Path, scrape_default_registry: Callable[[], Scrape]
) -> None:
    """The watcher the ranker and retrieval run: a config with an error is rejected (the previous one stays),
    a change whose model check cannot run waits; a good change raises neither alert."""
    from experiment_router.errors import ModelCheckUnavailable
    from experiment_router.reload import ConfigWatcher

    config = tmp_path / "experiments.yaml"
    text = (ROOT / "deploy" / "config" / "experiments.yaml").read_text()
    config.write_text(text)
    checkable = True

    def model_exists(stage: str, name: str, version: str) -> bool:
        if not checkable:
            raise ModelCheckUnavailable("retrieval does not answer")
        return True

    watcher = ConfigWatcher(config, settle_s=0.0, model_exists=model_exists)
    before = scrape_default_registry()
    config.write_text(text + "\n# a good change\n")
    assert watcher.check_now()
    good = scrape_default_registry()
    config.write_text(text.replace("experiments:", "experiments: [", 1))
    assert not watcher.check_now()
    rejected = scrape_default_registry()
    checkable = False
    config.write_text(text + "\n# waits for its model check\n")
    assert not watcher.check_now() and not watcher.check_now()
    waiting = scrape_default_registry()
    assert not fires("MtrankExperimentConfigRejected", before, good)
    assert not fires("MtrankExperimentConfigPending", before, good)
    assert fires("MtrankExperimentConfigRejected", good, rejected)
    assert fires("MtrankExperimentConfigPending", rejected, waiting)
    assert not fires("MtrankExperimentConfigRejected", rejected, waiting)


EVENT_ALERTS = (
    "MtrankExposuresDropped",
    "MtrankEventsDropped",
    "MtrankEventsJournalled",
    "MtrankEventsDeadLettered",
)


async def _exposures_through(
    root: Path, producer: EventProducer, scrape: Callable[[], Scrape], requests: int
) -> tuple[Scrape, Scrape]:
    """Scrapes before and after ``requests`` Rank calls of a ranker whose exposures go to ``producer``, once
    the ranker has handed every exposure over (or dropped it)."""
    from ranker_server.server import RankerServer

    handed = ("mtrank_exposures_sent_total", "mtrank_exposures_dropped_total")
    server = RankerServer(make_settings(root), MutableSource(FakeRouter()), producer)
    await server.start()
    try:
        before = scrape()
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ranking_pb2_grpc.RankerStub(channel)
            for i in range(requests):
                await stub.Rank(ranking_pb2.RankRequest(user_id=f"events-{i}", candidate_ids=[1000, 1001]))
        done = sum(before.get((name, frozenset()), 0.0) for name in handed) + requests
        for _ in range(200):
            if sum(REGISTRY.get_sample_value(name) or 0.0 for name in handed) >= done:
                break
            await asyncio.sleep(0.05)
        return before, scrape()
    finally:
        await server.stop(1)


@pytest.mark.integration
async def test_event_alerts_fire_when_kafka_is_away(
    repository: Path,  # noqa: F811
    tmp_path: Path,
    kafka_broker: EmbeddedBroker,  # noqa: F811
    scrape_default_registry: Callable[[], Scrape],
) -> None:
    """The ranker's exposures through the real event producer: with Kafka there, no event alert fires; with
    Kafka away they are journalled once the buffer is full, and dropped without a journal; an invalid event is
    set aside."""
    requests = 6
    alive = EventProducer(kafka_broker.bootstrap, journal_path=tmp_path / "alive.journal")
    try:
        before, after = await _exposures_through(repository, alive, scrape_default_registry, requests)
        assert alive.flush(30)
    finally:
        alive.close(timeout=5)
    assert alive.stats.sent == requests
    assert [name for name in EVENT_ALERTS if fires(name, before, after)] == []

    down = f"127.0.0.1:{free_port()}"
    journalled = EventProducer(
        down, buffer_size=2, journal_path=tmp_path / "down.journal", delivery_timeout_s=0.5
    )
    try:
        before, after = await _exposures_through(repository, journalled, scrape_default_registry, requests)
    finally:
        journalled.close(timeout=0.5)
    assert journalled.stats.journalled > 0
    assert [name for name in EVENT_ALERTS if fires(name, before, after)] == ["MtrankEventsJournalled"]

    lost = EventProducer(down, buffer_size=2, journal_path=None, delivery_timeout_s=0.5)
    try:
        before, after = await _exposures_through(repository, lost, scrape_default_registry, requests)
        assert lost.send_exposures([events_pb2.Exposure(experiment_key="no-user")]) == 0
        after = scrape_default_registry()
    finally:
        lost.close(timeout=0.5)
    assert lost.stats.dropped > 0
    assert [name for name in EVENT_ALERTS if fires(name, before, after)] == [
        "MtrankExposuresDropped",
        "MtrankEventsDropped",
        "MtrankEventsDeadLettered",
    ]


@pytest.mark.integration
def test_sample_ratio_mismatch_fires_for_a_broken_split_only() -> None:
    """The dashboard server over a store where one running experiment's users split 55/45 against configured
    halves (chi-square p about 8e-6, below the config's srm_threshold) and another's as configured: its
    periodic check makes the alert fire for the first, with its experiment label, and not for the second."""
    from analytics.metrics import AnalysisConfig, load_analysis_config
    from analytics.server import AnalyticsServer
    from analytics.store import MemoryEventStore
    from tests.analytics.stats.simulated_events import simulate_experiment

    config = load_analysis_config(ROOT / "analytics" / "examples" / "metrics.yaml").model_dump()
    halves = {"weights": {"control": 0.5, "treatment": 0.5}}
    config["experiments"] = {"broken": halves, "healthy": halves}
    store = MemoryEventStore()
    simulate_experiment(store, "broken", users=2000, seed=1, weights=(0.55, 0.45))
    simulate_experiment(store, "healthy", users=2000, seed=2)
    flagged = {
        key: ("mtrank_experiment_srm_flagged", frozenset({("experiment", key)}))
        for key in config["experiments"]
    }
    with AnalyticsServer(store, AnalysisConfig.model_validate(config), port=0, srm_interval_s=0.05) as server:
        for _ in range(400):  # until the check, in the server's own thread, has flagged both or not
            checked = scrape(server.port)
            if all(series in checked for series in flagged.values()):
                break
            time.sleep(0.05)
    assert fires("MtrankExperimentSampleRatioMismatch", {}, series_of(checked, experiment="broken"))
    assert not fires("MtrankExperimentSampleRatioMismatch", {}, series_of(checked, experiment="healthy"))
    assert checked[flagged["healthy"]] == 0  # checked, not absent
