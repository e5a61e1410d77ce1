"""``python -m ranker_server`` as operators run it: real router config, --workers on one port, reload, SIGTERM."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from experiment_router.router import Router
from proto import ranking_pb2, ranking_pb2_grpc
from ranker_server.__main__ import build_parser, main
from ranker_server.app import configuration_text, unserved_retrieval_experiments
from ranker_server.config import ServerSettings
from tests.ranker_server.conftest import FakeRouter, MutableSource, serving

CONFIG = """\
version: 1
defaults:
  retrieval: {{model_name: graph, model_version: "1"}}
  ranking: {{model_name: tiny, model_version: "1", task_weights: {{click: 1.0}}}}
experiments:
  - key: rank-exp
    stage: ranking
    status: running
    layer: {{name: ranking, range: [0.0, 1.0]}}
    coverage: 1.0
    variations:
      - key: control
        weight: 0.5
        payload: {{model_name: tiny, model_version: "{control}", task_weights: {{click: 1.0, watch: 0.0}}}}
      - key: treatment
        weight: 0.5
        payload: {{model_name: tiny, model_version: "{treatment}", task_weights: {{click: 0.5, watch: 0.5}}}}
"""


RETRIEVAL_EXPERIMENT = """\
  - key: retrieval-exp
    stage: retrieval
    status: running
    layer: {name: retrieval, range: [0.0, 1.0]}
    variations:
      - {key: control, weight: 0.5, payload: {model_name: graph, model_version: "1"}}
      - {key: treatment, weight: 0.5, payload: {model_name: graph, model_version: "2"}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_the_operator_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--repository",
        "--experiments",
        "--workers",
        "--tls-cert",
        "--auth-token-file",
        "--kafka",
        "--retrieval",
    ):
        assert flag in out


def test_a_config_naming_a_missing_model_fails_to_start_with_a_clear_error(
    repository: Path, tmp_path: Path
) -> None:
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="7"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ranker_server",
            "--repository",
            str(repository),
            "--experiments",
            str(config),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert str(config) in proc.stderr and "tiny" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_misspelt_task_weight_fails_to_start_naming_file_line_and_task(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ranker weighed a task its model lacks as 0: a typo silently dropped the task from the ranking."""
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="2").replace("{click: 0.5,", "{clicks: 0.5,"))
    argv = ["--repository", str(repository), "--experiments", str(config), "--port", "0", "--event-loop", "asyncio"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{config}:17:" in err and "unknown task 'clicks' for ranking model tiny/2" in err, err


def wait_serving(target: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            time.sleep(0.2)
    raise AssertionError(f"server at {target} never became SERVING")


def scraped(metrics_port: int, series: str) -> float:
    """The sum of the series whose exposition lines start with ``series`` on one worker's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a listening TCP socket on ``port`` (read from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, as an orchestrator stops the server; killed when it has not exited within 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.integration
@pytest.mark.slow
def test_two_workers_share_the_port_reload_the_config_and_stop_on_sigterm(
    repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository / "tiny", repo / "tiny")
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="1"))
    port, metrics_port = free_port(), free_port()
    while metrics_port + 1 == port:
        metrics_port = free_port()
    args = ["--repository", str(repo), "--experiments", str(config), "--port", str(port)]
    args += ["--metrics-port", str(metrics_port), "--workers", "2", "--poll-interval", "0.2", "--grace", "2"]
    args += ["--not-serving-delay", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "ranker_server", *args], stderr=subprocess.PIPE, text=True)
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target)
        time.sleep(1.0)  # the second worker may bind a moment later
        request = ranking_pb2.RankRequest(user_id="u", candidate_ids=list(range(1000, 1050)), top_k=5)
        versions = set()
        for i in range(40):  # a fresh channel per call: a new connection the kernel may hand to either worker
            with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                request.user_id = f"user-{i}"
                versions.add(ranking_pb2_grpc.RankerStub(channel).Rank(request, timeout=10).model.version)
        assert versions == {"1"}
        ports = (metrics_port, metrics_port + 1)
        served = [scraped(p, "mtrank_inference_request_success_total{") for p in ports]
        assert sum(served) == 40 and min(served) > 0, served
        calls = [scraped(p, 'mtrank_requests_total{code="OK",method="Rank"}') for p in ports]
        assert calls == served, "each worker counts the calls it served on its own endpoint"
        # /metrics listens where gRPC does (--host, 127.0.0.1 by default), not on every interface
        assert listening_addresses(metrics_port) == listening_addresses(metrics_port + 1) == {"127.0.0.1"}

        config.write_text(CONFIG.format(control="2", treatment="2"))  # both workers pick this up
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while time.monotonic() < deadline and seen != {"2"}:
            seen = set()
            for i in range(10):
                with grpc.insecure_channel(
                    target, options=[("grpc.use_local_subchannel_pool", 1)]
                ) as channel:
                    request.user_id = f"user-{i}"
                    seen.add(ranking_pb2_grpc.RankerStub(channel).Rank(request, timeout=10).model.version)
            time.sleep(0.2)
        assert seen == {"2"}
    finally:
        stop(proc)
    log = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, log[-2000:]
    for worker in (0, 1):  # each worker's lines carry its tag (they had none: the two logs were one)
        assert f" w{worker} INFO ranker_server.server: ranker serving on 127.0.0.1:{port} " in log, log[-2000:]


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_port_in_use_is_a_one_line_error(
    flag: str, repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="1"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {"--port": "0", "--metrics-port": "0", flag: str(taken.getsockname()[1])}
        argv = ["--repository", str(repository), "--experiments", str(config), "--event-loop", "asyncio"]
        assert main([*argv, *(x for item in ports.items() for x in item)]) == 2  # was a RuntimeError/OSError traceback
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{ports[flag]}" in err and "Traceback" not in err, err


def worker_pids(parent: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]


def test_workers_report_a_bad_config_in_one_line_each(repository: Path, tmp_path: Path) -> None:
    """Each worker printed the ConfigErrors traceback, and the parent exited 1."""
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="7"))
    args = ["--repository", str(repository), "--experiments", str(config), "--port", str(free_port())]
    proc = subprocess.run(
        [sys.executable, "-m", "ranker_server", *args, "--workers", "2"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert f"ranker_server: worker 0: {config}:" in proc.stderr or f"ranker_server: worker 1: {config}:" in proc.stderr
    assert "tiny/7 is not in the model repository" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_worker_stops_the_others_and_fails_the_server(repository: Path, tmp_path: Path) -> None:
    """The parent waited on the workers in order, so one killed worker left the server at half capacity with
    nothing failing (and a worker killed by a signal counted as exit status 0)."""
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="1"))
    port = free_port()
    args = ["--repository", str(repository), "--experiments", str(config), "--port", str(port), "--grace", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ranker_server", *args, "--workers", "2"], stderr=subprocess.PIPE, text=True
    )
    try:
        wait_serving(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while len(pids := worker_pids(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        assert proc.wait(30) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not Path(f"/proc/{pids[1]}").exists() or "zombie" in Path(f"/proc/{pids[1]}/status").read_text()
    assert "worker 0 ended (status 137); stopping the others" in (proc.stderr.read() if proc.stderr else "")


def test_an_unwritable_exposure_journal_is_a_one_line_error(repository: Path, tmp_path: Path) -> None:
    """With --kafka the journal opens under $MTRANK_DATA_DIR at start: unwritable, it was a traceback."""
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="1"))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the data folder should be")
    args = ["--repository", str(repository), "--experiments", str(config), "--port", "0", "--kafka", "127.0.0.1:1"]
    proc = subprocess.run(
        [sys.executable, "-m", "ranker_server", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "MTRANK_DATA_DIR": str(blocked)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"ranker_server: cannot open journal {blocked}/journal/" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--grace", "-1"], "--grace -1.0: "),
        (["--grace", "inf"], "--grace inf: Input should be a finite number"),  # served, and waited for ever
        (["--default-timeout", "nan"], "--default-timeout nan: "),
        (["--max-delay-ms", "inf"], "--max-delay-ms inf: "),
        (["--workers", "0"], "--workers 0: "),
        (["--retrieval", "retrieval"], "--retrieval retrieval: not HOST:PORT"),  # gRPC dialled retrieval:443
        (["--retrieval", "retrieval:70000"], "--retrieval retrieval:70000: not HOST:PORT"),
        (["--kafka", "kafka:9092,kafka:x"], "--kafka kafka:9092,kafka:x: 'kafka:x' is not host:port"),
        # what Kubernetes passes for a $(VAR) its ConfigMap lacks: tried as a host name and a topic for ever
        (["--kafka", "$(KAFKA_BOOTSTRAP)"], "--kafka $(KAFKA_BOOTSTRAP): '$(KAFKA_BOOTSTRAP)' is not"),
        (["--exposure-topic", "$(EXPOSURES_TOPIC)"], "--exposure-topic $(EXPOSURES_TOPIC): not a Kafka"),
        (["--retrieval", "$(RETRIEVAL):50052"], "--retrieval $(RETRIEVAL):50052: not HOST:PORT"),
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key must be given together"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(
    flags: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Errors named settings fields (grace_s, max_delay_ms) after 25 lines of usage; an infinite duration, a
    --retrieval without a port and a malformed --kafka started a server."""
    monkeypatch.setattr("ranker_server.app.run", lambda settings: pytest.fail(f"a server started: {flags}"))
    argv = ["--repository", str(tmp_path), "--experiments", str(tmp_path / "experiments.yaml"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m ranker_server: error: ") and err.count("\n") == 1, err
    assert expected in err


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_repository_that_is_no_folder_is_named_as_such(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was reported as every model of the experiment config missing from the repository, one line each."""
    monkeypatch.setattr("ranker_server.app.run", lambda settings: pytest.fail("a server started"))
    repository = tmp_path / "models"
    if kind == "file":
        repository.write_text("")
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="2"))
    assert main(["--repository", str(repository), "--experiments", str(config)]) == 2
    reason = "not a folder" if kind == "file" else "no such folder"
    assert capsys.readouterr().err == f"python -m ranker_server: error: --repository {repository}: {reason}\n"


def test_help_says_what_every_flag_does_with_its_unit() -> None:
    """--exposure-topic and --log-level had no help, required flags said '(default: None)'."""
    parser = build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    text = parser.format_help()
    assert "(default: None)" not in text and "MTRANK_DATA_DIR" in text
    for flag in ("--grace", "--not-serving-delay", "--default-timeout", "--poll-interval"):
        assert f"{flag} SECONDS" in text
    assert "--max-delay-ms MS" in text


def test_the_log_level_is_case_insensitive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[ServerSettings] = []
    monkeypatch.setattr("ranker_server.app.run", lambda settings: started.append(settings) or 0)
    argv = ["--repository", str(tmp_path), "--experiments", str(tmp_path / "x.yaml"), "--log-level", "debug"]
    assert main(argv) == 0 and len(started) == 1


def test_the_start_log_names_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="2") + RETRIEVAL_EXPERIMENT)
    router = Router.from_file(config)
    settings = ServerSettings(repository=tmp_path, experiments=config, kafka="kafka:9092", metrics_port=9101)
    assert configuration_text(settings, router.config, 9102) == (
        f"experiments {config} (2 running: rank-exp, retrieval-exp); retrieval off; "
        "exposures to kafka:9092 topic mtrank.exposures; metrics 127.0.0.1:9102"
    )
    assert unserved_retrieval_experiments(settings, router.config) == ["retrieval-exp"]  # logged as a warning
    with_retrieval = settings.model_copy(update={"retrieval": "retrieval:50052"})
    assert unserved_retrieval_experiments(with_retrieval, router.config) == []


async def test_the_serving_line_names_the_models_and_their_provider(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ranker_server.server")
    async for running in serving(repository, MutableSource(FakeRouter())):
        port = running.server.port
        assert running.server.repository is not None
        provider = running.server.repository.snapshot.models["tiny", "1"].runner.provider  # CUDA on a GPU
    (line,) = [r.getMessage() for r in caplog.records if "ranker serving on" in r.getMessage()]
    assert line == f"ranker serving on 127.0.0.1:{port} (plaintext): tiny/1, tiny/2 on {provider}"


@pytest.mark.integration
def test_metrics_port_zero_serves_on_any_free_port(repository: Path, tmp_path: Path) -> None:
    """``--metrics-port 0`` turned /metrics off here, where the retrieval server, the outcome server and the
    analytics consumer serve it on any free port (as ``--port 0`` does); unset is off."""
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="1"))
    args = ["--repository", str(repository), "--experiments", str(config), "--event-loop", "asyncio"]
    args += ["--port", "0", "--metrics-port", "0", "--not-serving-delay", "0", "--grace", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "ranker_server", *args], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # ends when the process does
            seen.append(line)
            metrics = re.search(r"; metrics (off|127\.0\.0\.1:(\d+))", line)
            if metrics:
                break
        assert metrics is not None and metrics[2] is not None, "".join(seen)[-2000:]
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics[2]}/metrics", timeout=5).read().decode()
        assert "mtrank_" in text
        assert build_parser().get_default("metrics_port") is None  # unset: off
    finally:
        stop(proc)


def test_kafka_python_logs_at_warning_at_most_whatever_the_log_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python's INFO lines repeat every connection attempt (117 in a 30 s Kafka outage); the ranker left
    its logger at --log-level, where the outcome reporter and the consumer kept it at WARNING."""
    kafka = logging.getLogger("kafka")
    monkeypatch.setattr(kafka, "level", logging.NOTSET)
    config = tmp_path / "experiments.yaml"
    config.write_text(CONFIG.format(control="1", treatment="2"))
    argv = ["--repository", str(tmp_path / "models"), "--experiments", str(config)]
    assert main([*argv, "--log-level", "DEBUG"]) == 2  # no repository: stops after setting up logging
    assert kafka.getEffectiveLevel() == logging.WARNING
    assert main([*argv, "--log-level", "ERROR"]) == 2
    assert kafka.getEffectiveLevel() == logging.ERROR
