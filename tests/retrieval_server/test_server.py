"""The real grpc.aio server on a free port: Retrieve, status codes, health, reflection, metrics, hot swap under
load, graceful shutdown, and the command line under SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proto import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from retrieval_server.model_repository import ModelRepository
from retrieval_server.server import RETRIEVER_SERVICE, RetrievalServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def served(repository_root):
    repository = ModelRepository(repository_root)
    repository.load("ssmtl", "1", default=True)
    repository.load("baseline", "1")
    server = RetrievalServer(repository, port=0, metrics_port=0, max_k=100)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield server, channel
    await channel.close()
    await server.stop(0.5)


async def test_retrieve_over_grpc_and_status_codes(served):
    server, channel = served
    stub = retrieval_pb2_grpc.RetrieverStub(channel)
    response = await stub.Retrieve(retrieval_pb2.RetrieveRequest(request_id="r1", user_id="5", k=7, exclude_ids=[6]))
    assert response.request_id == "r1" and len(response.candidate_ids) == 7 and len(response.scores) == 7
    assert 5 not in response.candidate_ids and 6 not in response.candidate_ids
    assert (response.model.name, response.model.version) == ("ssmtl", "1")
    named = await stub.Retrieve(retrieval_pb2.RetrieveRequest(
        user_id="5", k=3, model=common_pb2.ModelRef(name="baseline", version="1")))
    assert named.model.name == "baseline"
    cases = [
        (retrieval_pb2.RetrieveRequest(user_id="5", k=0), grpc.StatusCode.INVALID_ARGUMENT, "k:"),
        (retrieval_pb2.RetrieveRequest(user_id="5", k=101), grpc.StatusCode.INVALID_ARGUMENT, "k:"),
        (retrieval_pb2.RetrieveRequest(user_id="nobody", k=3), grpc.StatusCode.INVALID_ARGUMENT, "user_features:"),
        (retrieval_pb2.RetrieveRequest(user_id="nobody", k=3, user_features=[1.0, 2.0]),
         grpc.StatusCode.INVALID_ARGUMENT, "user_features: expected 16 values, got 2"),
        (retrieval_pb2.RetrieveRequest(user_id="5", k=3, model=common_pb2.ModelRef(name="x", version="1")),
         grpc.StatusCode.NOT_FOUND, "model x:1"),
        (retrieval_pb2.RetrieveRequest(user_id="5", k=3, model=common_pb2.ModelRef(version="1")),
         grpc.StatusCode.INVALID_ARGUMENT, "model.name: must be set when model.version is"),
        (retrieval_pb2.RetrieveRequest(user_id="5" * 1_100_000, k=3), grpc.StatusCode.INVALID_ARGUMENT,
         "user_id: is longer than 512 bytes"),
        (retrieval_pb2.RetrieveRequest(user_id="5", k=3, attributes={"c": "x" * 1_100_000}),
         grpc.StatusCode.INVALID_ARGUMENT, "attributes: has a value longer than"),
    ]
    # ids are strings: only "5" itself is node 5 (the router hashes " 5 " and "٥" as other users)
    cases += [(retrieval_pb2.RetrieveRequest(user_id=user, k=3), grpc.StatusCode.INVALID_ARGUMENT, "user_features:")
              for user in (" 5", "5 ", "+5", "05", "5_0", "\u0665", "5\n")]  # fmt: skip
    for request, code, text in cases:
        with pytest.raises(aio.AioRpcError) as info:
            await stub.Retrieve(request)
        assert info.value.code() == code and text in info.value.details()
        assert len(info.value.details()) < 200  # a huge field is never echoed


async def test_garbage_bytes_are_invalid_argument_without_a_logged_traceback(served, caplog):
    _, channel = served
    call = channel.unary_unary("/mtrank.v1.Retriever/Retrieve", request_serializer=None, response_deserializer=None)
    with caplog.at_level(logging.DEBUG):
        for payload in (b"\xff\xff\xff\x0f", b"\x0a\x05ab", b"\x18" + b"\xff" * 11):
            with pytest.raises(aio.AioRpcError) as info:
                await call(payload, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == "request: cannot be parsed as the method's request message"
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_list_models_tells_what_is_served(served):
    _, channel = served
    response = await retrieval_pb2_grpc.RetrieverStub(channel).ListModels(retrieval_pb2.ListModelsRequest())
    assert [(m.name, m.version) for m in response.models] == [("baseline", "1"), ("ssmtl", "1")]
    assert (response.default_model.name, response.default_model.version) == ("ssmtl", "1")
    assert response.max_k == 100


async def test_health_reflection_and_metrics(served):
    server, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=RETRIEVER_SERVICE))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = [r async for r in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert RETRIEVER_SERVICE in names and "grpc.health.v1.Health" in names
    stub = retrieval_pb2_grpc.RetrieverStub(channel)
    await stub.Retrieve(retrieval_pb2.RetrieveRequest(user_id="1", k=10))
    with pytest.raises(aio.AioRpcError):
        await stub.Retrieve(retrieval_pb2.RetrieveRequest(user_id="1", k=0))
    for _ in range(3):  # the ranker's periodic probe: no Retrieve call (each was counted as an OK one)
        await stub.ListModels(retrieval_pb2.ListModelsRequest())
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode())
    assert 'retrieval_request_seconds_count{model="ssmtl",version="1"} 1.0' in body
    assert "retrieval_k_count 1.0" in body
    assert 'retrieval_index_size{index="exact",model="ssmtl",version="1"} 200.0' in body
    assert 'retrieval_model_loaded{model="ssmtl",provider="CPUExecutionProvider",version="1"} 2.0' in body
    assert 'retrieval_requests_total{code="INVALID_ARGUMENT"} 1.0' in body
    assert 'retrieval_requests_total{code="OK"} 1.0' in body


async def test_hot_swap_under_concurrent_load_fails_no_request(served):
    server, channel = served
    stub = retrieval_pb2_grpc.RetrieverStub(channel)
    failures: list[BaseException] = []
    seen: set[tuple[str, str]] = set()
    stop = asyncio.Event()

    async def client(worker: int) -> int:
        done = 0
        while not stop.is_set():
            try:
                r = await stub.Retrieve(retrieval_pb2.RetrieveRequest(user_id=str(worker), k=20), timeout=10)
                seen.add((r.model.name, r.model.version))
                done += 1
            except aio.AioRpcError as exc:
                failures.append(exc)
        return done

    workers = [asyncio.create_task(client(w)) for w in range(16)]
    await asyncio.sleep(0.3)
    await server.reload("ssmtl", "1")  # rebuilt index of the served version
    await server.reload("ssmtl", "2", default=True)  # a new version becomes the default
    await asyncio.sleep(0.3)
    after = await stub.Retrieve(retrieval_pb2.RetrieveRequest(user_id="3", k=5))
    stop.set()
    counts = await asyncio.gather(*workers)
    assert failures == [] and sum(counts) > 16
    assert after.model.version == "2" and ("ssmtl", "2") in seen


async def test_poller_survives_an_unexpected_refresh_error(
    repository_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a refresh raises is logged and the next poll runs: a dead poller would end hot reload until a
    restart, and ``stop`` would re-raise its error."""
    repository = ModelRepository(repository_root)
    repository.load("ssmtl", "1", default=True)
    calls: list[int] = []

    def refresh() -> list[tuple[str, str]]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk went away")
        return []

    monkeypatch.setattr(repository, "refresh", refresh)
    server = RetrievalServer(repository, port=0, poll_interval_s=0.01)
    await server.start()
    try:
        for _ in range(200):
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.01)
        assert len(calls) >= 3
        assert any("refresh failed" in r.getMessage() for r in caplog.records)
    finally:
        await server.stop(0.1)


async def test_stop_reports_not_serving_before_draining(served):
    server, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    observed = []
    real_stop = server._server.stop

    async def stop_and_observe(grace):
        observed.append((await health.Check(health_pb2.HealthCheckRequest(service=RETRIEVER_SERVICE))).status)
        return await real_stop(grace)

    server._server.stop = stop_and_observe
    await server.stop(0.5)
    assert observed == [health_pb2.HealthCheckResponse.NOT_SERVING]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_serves_and_exits_cleanly_on_sigterm(repository_root, tmp_path):
    from tests.retrieval_server.test_dataplane import EXPERIMENTS

    (tmp_path / "experiments.yaml").write_text(EXPERIMENTS.replace("range: [0.0, 0.5]", "range: [0.0, 1.0]"))
    port, metrics_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "retrieval_server", "--repository", str(repository_root), "--model", "ssmtl:1",
         "--model", "baseline:1", "--model", "ssmtl:2", "--port", str(port), "--metrics-port", str(metrics_port),
         "--grace", "1", "--experiments", str(tmp_path / "experiments.yaml")],
        env={**os.environ, "PYTHONPATH": os.getcwd()}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = retrieval_pb2_grpc.RetrieverStub(channel)
            response = stub.Retrieve(retrieval_pb2.RetrieveRequest(user_id="2", k=4,
                                     model=common_pb2.ModelRef(name="baseline", version="1")))
            assert len(response.candidate_ids) == 4 and response.model.name == "baseline"
            routed = stub.Retrieve(retrieval_pb2.RetrieveRequest(user_id="2", k=4))  # no model: the router picks
            assert [a.experiment_key for a in routed.assignments] == ["retrieval-ssmtl"]
            assert routed.assignments[0].stage == "retrieval"
            assert (routed.model.name, routed.model.version) in {("baseline", "1"), ("ssmtl", "2")}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read() if process.stdout else ""
    assert "draining" in output and "CPUExecutionProvider" in output


def test_command_line_help_and_bad_package(tmp_path):
    out = subprocess.run([sys.executable, "-m", "retrieval_server", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--repository" in out.stdout and "NAME:VERSION" in out.stdout
    started = time.perf_counter()
    bad = subprocess.run([sys.executable, "-m", "retrieval_server", "--repository", str(tmp_path), "--model", "a:1",
                          "--port", "0", "--metrics-port", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "manifest.json: not found" in bad.stderr
    assert time.perf_counter() - started < 60
    assert np.isfinite(started)


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_command_line_port_in_use_is_a_one_line_error(flag, repository_root, capsys):
    from retrieval_server.__main__ import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {"--port": "0", "--metrics-port": "0", flag: str(taken.getsockname()[1])}
        argv = ["--repository", str(repository_root), "--model", "ssmtl:1", "--poll-interval", "0"]
        assert main([*argv, *(x for item in ports.items() for x in item)]) == 2  # was a RuntimeError traceback
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{ports[flag]}" in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--port", "70000"), ("--metrics-port", "-1"), ("--threads", "0"), ("--max-k", "0"), ("--grace", "nan"),
     ("--experiments-poll", "0")],  # a poll interval of 0 re-read the config in a busy loop (a core at 100%)
)
def test_command_line_out_of_range_numbers_are_usage_errors(flag, value, capsys):
    from retrieval_server.__main__ import build_parser

    with pytest.raises(SystemExit) as info:  # --port 70000 served on some other port; --threads 0 named no flag
        build_parser().parse_args(["--repository", ".", "--model", "a:1", flag, value])
    assert info.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err


def test_command_line_log_level_is_checked_and_case_insensitive(capsys):
    """``--log-level debug`` and ``--log-level verbose`` were ValueError tracebacks from basicConfig."""
    from retrieval_server.__main__ import build_parser

    argv = ["--repository", ".", "--model", "a:1", "--log-level"]
    assert build_parser().parse_args([*argv, "debug"]).log_level == "DEBUG"
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*argv, "verbose"])
    assert info.value.code == 2 and "argument --log-level: invalid choice" in capsys.readouterr().err


def test_command_line_metrics_are_off_unless_a_port_is_given():
    """It was 9092, where a local Kafka broker listens (with one running, the defaults did not start), then
    9102, on where every other server's /metrics is off without --metrics-port (a second retrieval server on
    the host failed to start)."""
    from retrieval_server.__main__ import build_parser

    assert build_parser().get_default("metrics_port") is None


def test_command_line_a_bad_experiment_config_fails_before_the_models_load(tmp_path, capsys):
    """The config was read after every --model had loaded (minutes for a large index)."""
    from retrieval_server.__main__ import main

    missing = tmp_path / "experiments.yaml"
    argv = ["--repository", str(tmp_path), "--model", "a:1", "--experiments", str(missing), "--port", "0"]
    assert main([*argv, "--metrics-port", "0"]) == 2
    assert capsys.readouterr().err == f"error: {missing}: cannot read config: No such file or directory\n"


def test_command_line_refuses_experiments_naming_a_version_it_does_not_serve(tmp_path, capsys):
    """Every request naming no model got NOT_FOUND 'model ssmtl:2 is not loaded' from such a variant (and from
    such a default), while health said SERVING; it is refused at start with file and line, before any load."""
    from retrieval_server.__main__ import main
    from tests.retrieval_server.test_dataplane import EXPERIMENTS

    config = tmp_path / "experiments.yaml"
    config.write_text(EXPERIMENTS)  # retrieval variants baseline/1 and ssmtl/2
    argv = ["--repository", str(tmp_path), "--model", "baseline:1", "--model", "ssmtl:1"]
    assert main([*argv, "--experiments", str(config), "--port", "0", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}:") and "retrieval model ssmtl/2 is not" in err, err
    assert "baseline/1" not in err
