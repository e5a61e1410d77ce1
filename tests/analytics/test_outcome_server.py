"""``python -m analytics.events.outcome_server`` as operators start and stop it: flags, help, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from analytics.events import outcome_server
from analytics.kafka.broker import free_port


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--address", "127.0.0.1:70000"], "--address 127.0.0.1:70000: not HOST:PORT"),  # listened on 4464
        (["--address", "outcomes"], "--address outcomes: not HOST:PORT"),
        (["--bootstrap", "kafka:x"], "--bootstrap kafka:x: 'kafka:x' is not host:port"),
        (["--topic", "$(OUTCOMES_TOPIC)"], "--topic $(OUTCOMES_TOPIC): not a Kafka topic name"),  # unresolved
    ],
)
def test_a_bad_flag_is_one_line_before_anything_starts(
    flags: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each of these started a server (on another port than asked for, with a drain time gRPC cannot use, or
    with a producer that held every outcome in its journal for good)."""

    def started(*args: object, **kwargs: object) -> None:
        pytest.fail(f"a producer started with {flags}")

    monkeypatch.setattr(outcome_server, "EventProducer", started)
    argv = ["--bootstrap", "127.0.0.1:1", "--journal", str(tmp_path / "j"), "--address", "127.0.0.1:0"]
    argv += flags
    assert outcome_server.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1, err


def test_help_says_what_every_flag_does() -> None:
    parser = outcome_server.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings  # --journal had none
    text = parser.format_help()
    assert "MTRANK_DATA_DIR" in text and "(default: None)" not in text and "--grace-s SECONDS" in text


@pytest.mark.integration
def test_sigterm_turns_health_not_serving_before_the_port_closes(tmp_path: Path) -> None:
    """Health stayed SERVING until the server stopped: clients watching it (gRPC client-side health checks)
    saw the stream fail instead of the server leaving."""
    port = free_port()
    argv = ["--bootstrap", "127.0.0.1:1", "--journal", str(tmp_path / "j"), "--address", f"127.0.0.1:{port}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "analytics.events.outcome_server", *argv, "--grace-s", "2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    statuses: list[str] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(next(watch).status))
            process.send_signal(signal.SIGTERM)
            try:
                for answer in watch:
                    statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
            except grpc.RpcError as exc:  # the server is gone
                statuses.append(exc.code().name)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert statuses[:2] == ["SERVING", "NOT_SERVING"], statuses
    log = process.stderr.read() if process.stderr else ""
    assert f"OutcomeReporter listening on 127.0.0.1:{port} (plaintext): outcomes to Kafka 127.0.0.1:1" in log
