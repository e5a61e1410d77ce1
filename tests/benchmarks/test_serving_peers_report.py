"""bench_serving_peers' report (concurrency 1 by the call's place in its round) and its same-model check."""

from __future__ import annotations

import argparse
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_ranker as br  # noqa: E402
from bench_serving_peers import (  # noqa: E402
    EXPERIMENTS,
    FLOORS,
    OIP,
    RANK,
    WORK_FLOORS,
    by_position,
    check_same_model,
    infer_request,
    kserve_label,
    lone_run_shares,
    report,
)


def test_each_place_in_the_round_gets_its_own_median() -> None:
    result = br.Result("a server")
    result.latencies_s = [0.005, 0.001, 0.002] * 3 + [0.009, 0.001, 0.002]  # four rounds of three calls, in order
    lines = by_position({"a server": {1: result}}, 3)
    assert lines[-2:] == ["|---|---:|---:|---:|", "| a server | 5.000 | 1.000 | 2.000 |"]


def test_the_report_counts_the_calls_each_row_was_timed_with() -> None:
    # 100 requests cannot be split into 60 rounds: a round times one call, so each row holds 60
    args = argparse.Namespace(
        requests=100, rounds=60, candidates=500, threads=2, kserve_version="0.0", connections=1
    )
    kserve = kserve_label("sync", "during-runs")
    names = [RANK, OIP, *FLOORS, *WORK_FLOORS, kserve]
    results = {}
    for name in names:
        latencies = [0.001 * (i % 3 + 1) for i in range(60)]
        results[name] = {c: br.Result(name, latencies, 1.0) for c in (1, 4, 16)}
    raw = {"raw": br.Result("raw", [0.0005] * 60, 1.0)}
    text = report(args, results, raw, ("up", "up"), [kserve], {})
    assert "concurrency 1: 60 (sync stub)" in text
    assert "| server | 0 |\n" in text  # one place per round
    assert "sustained load" not in text  # none measured: no verdict, a dash in the column
    assert f"| {RANK} | 2.000 | 3.000 | 60 | 60 | - |" in text


def test_sustained_rows_report_the_median_repetition_and_the_verdict_on_it() -> None:
    args = argparse.Namespace(
        requests=60, rounds=60, candidates=500, threads=2, kserve_version="0.0", connections=1,
        sustained_s=4.0, sustained_reps=3,
    )  # fmt: skip
    kserve = kserve_label("executor", "off")
    names = [RANK, OIP, *FLOORS, *WORK_FLOORS, kserve]
    results = {name: {c: br.Result(name, [0.002] * 60, 1.0) for c in (1, 4, 16)} for name in names}
    calls = {RANK: (1000, 1400, 1300), kserve: (1200, 1250, 1350)}  # calls per 4 s repetition
    sustained = {
        name: [br.Result(name, [0.05] * n, 4.0) for n in calls.get(name, (800,) * 3)] for name in names
    }
    raw = {"raw": br.Result("raw", [0.0005] * 60, 1.0)}
    text = report(args, results, raw, ("up", "up"), [kserve], sustained)
    assert "then concurrency 16 sustained: 3 x 4 s of 16 callers per row" in text
    assert f"| {RANK} | 2.000 | 2.000 | 60 | 60 | 325 (250-350) |" in text
    assert f"| {kserve} | 2.000 | 2.000 | 60 | 60 | 312 (300-338) |" in text
    # the medians, 325 against 312, not the totals (3,700 calls against 3,800): a slow repetition counts once
    assert "Target 3 on sustained load (median of the repetitions): 325 vs 312" in text
    assert "-> 104% (met); our Rank at or above KServe's best in 1 of 3 repetitions" in text


@pytest.mark.integration
def test_the_same_model_check_accepts_a_request_with_fewer_candidates_than_top_k(tmp_path: Path) -> None:
    # --candidates 50: Rank answers all 50 (top_k is 100), ModelInfer the raw logits of the 50 rows
    package = br.write_package(br.build_model(), tmp_path)
    ids, sparse, dense = br.request_rows(package, 50, np.random.default_rng(1))
    session = br.ort_session(package / "model.onnx", 1, "off")
    expected = session.run(["logits"], {"sparse": sparse, "dense": dense})[0]
    proc, target = br.start_server(tmp_path, 1, br.free_port(), [], EXPERIMENTS)
    try:
        targets = {RANK: (target, "rank"), OIP: (target, "infer")}
        check_same_model(targets, br.rank_request(ids), infer_request(sparse, dense), expected)
    finally:
        proc.kill()
        proc.wait()



def _metrics_page(body: str) -> HTTPServer:
    """A /metrics endpoint on a free loopback port serving ``body``, in a daemon thread."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_lone_run_shares_are_read_from_each_rankers_metrics() -> None:
    counted = _metrics_page(
        'mtrank_inference_lone_runs_total{session="spinning"} 30.0\n'
        'mtrank_inference_lone_runs_total{session="sleeping"} 10.0\n'
        "mtrank_inference_loop_runs_total 25.0\n"
    )
    older = _metrics_page("mtrank_requests_total 1.0\n")  # a checkout without the counter
    one_session = _metrics_page("mtrank_inference_loop_runs_total 7.0\n")  # --spinning off: no chooser
    split = _metrics_page(
        'mtrank_inference_lone_runs_total{session="split"} 60.0\n'
        'mtrank_inference_lone_runs_total{session="spinning"} 15.0\n'
        'mtrank_inference_lone_runs_total{session="sleeping"} 5.0\n'
    )
    pages = (counted, older, one_session, split)
    try:
        names = ("ours", "older", "off", "split")
        ports = {name: page.server_port for name, page in zip(names, pages, strict=True)}
        lines = lone_run_shares(ports)
    finally:
        for page in pages:
            page.shutdown()
    assert lines[1:] == [
        "- ours: 30 of 40 on the spinning session (75%); 25 runs on the event loop's thread",
        "- older: none counted (one session, or a ranker without the counter)",
        "- off: none counted (one session, or a ranker without the counter); 7 runs on the event loop's"
        " thread",
        "- split: 60 of 80 in parts at once (75%), 15 of 20 of the others on the spinning session (75%)",
    ]
