"""EmbeddedBroker: starts a real Tansu broker, creates topics, restarts empty, fails clearly."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from analytics.kafka.broker import BrokerBinaryNotFound, BrokerStartError, EmbeddedBroker

pytestmark = pytest.mark.integration


def test_start_creates_topics_and_stop_frees_port(tmp_path: Path) -> None:
    with EmbeddedBroker(partitions=3, topics=("a.events",), data_dir=tmp_path) as broker:
        assert broker.running
        admin = broker.admin()
        try:
            assert "a.events" in admin.list_topics()
            (desc,) = admin.describe_topics(["a.events"])
            assert len(desc["partitions"]) == 3
        finally:
            admin.close()
        pid = broker.pid
    assert not broker.running and pid is not None
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", broker.port))
    assert (tmp_path / "bin").is_dir()  # the binary cache lives in the data folder, not in $HOME


def test_restart_same_port_comes_back_empty_with_topics(tmp_path: Path) -> None:
    with EmbeddedBroker(partitions=1, topics=("t1",), data_dir=tmp_path) as broker:
        port = broker.port
        broker.create_topics(["extra"])
        broker.restart()
        assert broker.port == port and broker.running
        admin = broker.admin()
        try:
            topics = set(admin.list_topics())
        finally:
            admin.close()
        assert "t1" in topics and "extra" not in topics


def test_port_busy_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BrokerStartError, match=f"port 127.0.0.1:{port} is already in use"):
            EmbeddedBroker(port=port, data_dir=tmp_path).start()


def test_early_exit_reports_stderr_tail(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'boom: storage engine unavailable' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    broker = EmbeddedBroker(binary=str(fake), data_dir=tmp_path, start_timeout=5)
    with pytest.raises(BrokerStartError, match=r"exited early with code 3(.|\n)*boom: storage engine"):
        broker.start()
    assert not broker.running


def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "nope"))
    with pytest.raises(BrokerBinaryNotFound, match="does not point at an executable"):
        EmbeddedBroker(data_dir=tmp_path).start()
