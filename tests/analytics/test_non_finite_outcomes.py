"""Outcome values NaN and +-Inf are refused everywhere they enter; finite values too large for float64 sums
(1e308) give an error code in the report, never an exception (CLI table, dashboard endpoint)."""

from __future__ import annotations

import json
import math
import urllib.request

import grpc
import pytest

from analytics.consumer.processor import decode_into
from analytics.events.errors import InvalidEvent
from analytics.events.messages import encode_outcome, frame_batch, make_outcome
from analytics.events.outcome_server import build_server
from analytics.events.producer import EventProducer
from analytics.kafka.broker import free_port
from analytics.metrics import AnalysisConfig
from analytics.report import build_report, format_report_table
from analytics.server import AnalyticsServer
from analytics.stats import messages
from analytics.stats.bayesian.tests import EffectBayesianTest
from analytics.stats.frequentist.tests import TTest
from analytics.stats.models.settings import BayesianConfig, FrequentistConfig
from analytics.stats.models.statistics import Ratio, SampleMean
from analytics.store import ExposureColumns, ExposureRow, MemoryEventStore, OutcomeColumns, OutcomeRow
from proto import events_pb2, outcomes_pb2, outcomes_pb2_grpc

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
def test_sdk_refuses_non_finite_values(value: float) -> None:
    with pytest.raises(InvalidEvent, match="Outcome.value must be a finite number"):
        make_outcome("u1", "watch_seconds", value)


def test_report_outcomes_refuses_non_finite_values() -> None:
    producer = EventProducer(f"127.0.0.1:{free_port()}", journal_path=None, delivery_timeout_s=0.5)
    server, port = build_server(producer, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = outcomes_pb2_grpc.OutcomeReporterStub(channel)
            for value in NON_FINITE:
                request = outcomes_pb2.ReportOutcomesRequest(
                    outcomes=[
                        events_pb2.Outcome(user_id="u1", metric="watch", value=1.0),
                        events_pb2.Outcome(user_id="u1", metric="watch", value=value),
                    ]
                )
                with pytest.raises(grpc.RpcError) as info:
                    stub.ReportOutcomes(request, timeout=5)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert info.value.details().startswith("outcomes[1].value must be a finite number")
        assert producer.stats.buffered == 0, "a rejected request queues nothing"
    finally:
        server.stop(0)
        producer.close(timeout=0.5)


def test_consumer_skips_non_finite_values_from_other_producers() -> None:
    good = make_outcome("u1", "watch", 2.0)
    bad = [events_pb2.Outcome(event_id=f"e{i}", user_id="u1", metric="watch", value=v, schema_version=1)
           for i, v in enumerate(NON_FINITE)]  # fmt: skip
    exposures, outcomes = ExposureColumns(), OutcomeColumns()
    assert decode_into(frame_batch([encode_outcome(o) for o in [good, *bad]]), exposures, outcomes) == 3
    assert outcomes.event_id == [good.event_id]
    assert outcomes.value == [2.0]


@pytest.mark.parametrize("test", [TTest, EffectBayesianTest])
@pytest.mark.parametrize("difference_type", ["relative", "absolute"])
def test_statistics_that_overflow_give_an_error_code(test: type, difference_type: str) -> None:
    config = (FrequentistConfig if test is TTest else BayesianConfig)(difference_type=difference_type)
    huge = SampleMean.from_values([1e308, 1.0, 2.0])  # sum of squares overflows float64
    normal = SampleMean.from_values([1.0, 2.0, 3.0])
    assert test(normal, huge, config).compute_result().error == messages.NUMERIC_OVERFLOW
    assert test(huge, normal, config).compute_result().error == messages.NUMERIC_OVERFLOW
    big = SampleMean.from_values([1e150, 2e150, 3e150])  # finite moments; the absolute Welch df overflows
    result = test(big, SampleMean.from_values([1e150, 3e150, 4e150]), config).compute_result()
    assert result.error in (None, messages.NUMERIC_OVERFLOW)
    assert result.error is not None or math.isfinite(result.estimate)
    ratio = Ratio.from_values([1e308, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert test(
        Ratio.from_values([1.0, 2.0, 1.0], [1.0, 1.0, 1.0]), ratio, config
    ).compute_result().error == (messages.NUMERIC_OVERFLOW)


def _store_with(value: float) -> MemoryEventStore:
    store = MemoryEventStore()
    exposures, outcomes = [], []
    for u in range(200):
        exposures.append(ExposureRow(f"x{u}", "exp", "control" if u % 2 else "treatment", f"u{u}", 1_000))
        for metric in ("watch", "click") if u < 3 or u % 3 else ("watch",):  # a third never clicks
            outcomes.append(OutcomeRow(f"{metric}{u}", f"u{u}", metric, 2_000, value if u < 3 else 1.0))
        outcomes.append(OutcomeRow(f"i{u}", f"u{u}", "impression", 2_000, 1.0))
    store.apply(exposures, outcomes, {})
    return store


CONFIG = AnalysisConfig.model_validate(
    {
        "timeline_points": 3,
        "metrics": [
            {"name": "watch", "type": "continuous", "event": "watch", "cuped": True},
            {"name": "ctr", "type": "ratio", "numerator": "click", "denominator": "impression",
             "aggregation": "sum"},
            {"name": "clicked", "type": "binomial", "event": "click"},
        ],
    }
)  # fmt: skip


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_report_and_its_table_survive_1e308() -> None:
    report = build_report(_store_with(1e308), CONFIG, "exp").to_dict()
    json.dumps(report, allow_nan=False)  # strict JSON: non-finite numbers became null
    errors = {
        m["name"]: {row["error"] for row in m["variants"] if not row["is_control"]} for m in report["metrics"]
    }
    assert errors == {
        "watch": {messages.NUMERIC_OVERFLOW},
        "ctr": {messages.NUMERIC_OVERFLOW},
        "clicked": {None},
    }
    table = format_report_table(report)  # the CLI's table
    assert "NUMERIC_OVERFLOW: values too large for float64 statistics" in table


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_dashboard_report_endpoint_survives_1e308() -> None:
    with AnalyticsServer(_store_with(1e308), CONFIG, port=0) as server:
        with urllib.request.urlopen(f"{server.url}/api/experiments/exp/report", timeout=30) as response:
            assert response.status == 200
            report = json.loads(response.read())
    assert report["metrics"][0]["variants"][1]["error"] == messages.NUMERIC_OVERFLOW
