"""The demo's running services: child processes that are health-checked on start and always cleaned up.

Every server runs as its real entry point (``python -m ranker_server ...``) in its own process group, so
that stopping the demo, normally or with Ctrl-C, leaves no process behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

logger = logging.getLogger(__name__)


class ServiceStartError(RuntimeError):
    """A service exited or never became healthy; the message carries the tail of its log."""


@dataclass
class Service:
    """One child process and the log file its output goes to."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Stack:
    """Starts services, waits for their gRPC health, stops them all (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.services: list[Service] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, module: str, args: Sequence[str]) -> Service:
        """Run ``python -m module args`` in a new process group, output to ``<log_dir>/<name>.log``."""
        service = Service(name, [sys.executable, "-m", module, *args], self.log_dir / f"{name}.log")
        log = service.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        service.process = subprocess.Popen(
            service.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        log.close()
        self.services.append(service)
        logger.info("started %s (pid %d): %s", name, service.process.pid, " ".join(service.argv))
        return service

    def wait_healthy(self, service: Service, address: str, timeout: float = 60.0) -> None:
        """Poll the standard gRPC health service at ``address`` until it reports SERVING."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if service.process is not None and service.process.poll() is not None:
                    raise ServiceStartError(
                        f"{service.name} exited with code {service.process.returncode}:\n{service.log_tail()}"
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise ServiceStartError(f"{service.name} not healthy at {address} after {timeout:.0f} s:\n{service.log_tail()}")

    def stop_service(self, service: Service, grace: float = 15.0) -> int:
        """SIGTERM one service and wait for its graceful shutdown (SIGKILL after ``grace``); returns its exit code."""
        self._signal(service, signal.SIGTERM)
        return self._wait_or_kill(service, grace)

    def kill(self, service: Service) -> int:
        """SIGKILL one service (a crash: no drain, no cleanup) and reap it; returns its exit code."""
        self._signal(service, signal.SIGKILL)
        assert service.process is not None
        return service.process.wait()

    def wait_exit(self, service: Service, timeout: float) -> int:
        """Wait for a service to exit by itself; raises TimeoutError if it is still running after ``timeout``."""
        assert service.process is not None
        try:
            return service.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{service.name} still running after {timeout:.0f} s:\n{service.log_tail()}") from None

    def stop(self, grace: float = 10.0) -> None:
        """Terminate every service (newest first); kill what has not exited within ``grace`` seconds."""
        for service in reversed(self.services):
            self._signal(service, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in reversed(self.services):
            self._wait_or_kill(service, max(0.1, deadline - time.monotonic()))
        self.services.clear()

    def _wait_or_kill(self, service: Service, timeout: float) -> int:
        """Wait up to ``timeout`` for a signalled service to exit, else SIGKILL it; returns its exit code."""
        assert service.process is not None
        try:
            return service.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s; killing it", service.name, timeout)
            self._signal(service, signal.SIGKILL)
            return service.process.wait()

    @staticmethod
    def _signal(service: Service, sig: signal.Signals) -> None:
        if service.process is None or service.process.poll() is not None:
            return
        try:
            os.killpg(service.process.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
