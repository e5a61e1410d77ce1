"""The demo's running services: child processes that are health-checked on start and always cleaned up.

Every server runs as its real entry point (``python -m ranker_server ...``) in its own process group, so
that stopping the demo, normally or with Ctrl-C, leaves no process behind. With ``watch=True`` (the demo) each
also gets SIGTERM from the kernel when the demo dies without cleaning up (SIGKILL, a crash), and a child that
exits while the demo still needs it stops the demo at once (``ChildExited``) instead of leaving it waiting.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from analytics.kafka.broker import die_with_parent

logger = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.5


class StackError(RuntimeError):
    """A child process failed the demo; the message says which and carries the tail of its log."""


class ServiceStartError(StackError):
    """A service exited or never became healthy; the message carries the tail of its log."""


class ChildExited(StackError):
    """A watched child exited while the demo still needed it (a crash, a kill, a lost broker)."""


def exit_description(code: int | None) -> str:
    """``exited with code 3`` or ``was killed by SIGKILL``: a negative Popen code is a signal, say which."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"


@dataclass
class _Watched:
    """A child the watchdog checks: ``exited`` says how it ended (None while it runs), ``tail`` its output."""

    name: str
    exited: Callable[[], str | None]
    tail: Callable[[], str]


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

    def __init__(self, log_dir: Path, watch: bool = False) -> None:
        self.log_dir = log_dir
        self.services: list[Service] = []
        self.watch_children = watch
        self._watched: dict[str, _Watched] = {}
        self._watch_lock = threading.Lock()
        self._failure: ChildExited | None = None
        self._closing = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._previous_handler: Callable[[int, FrameType | None], object] | int | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, module: str, args: Sequence[str]) -> Service:
        """Run ``python -m module args`` in a new process group, output to ``<log_dir>/<name>.log``."""
        service = Service(name, [sys.executable, "-m", module, *args], self.log_dir / f"{name}.log")
        log = service.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        service.process = subprocess.Popen(
            service.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            preexec_fn=die_with_parent if self._dies_with_us() else None,
        )
        log.close()
        self.services.append(service)
        if self.watch_children:
            process = service.process
            self.watch(name, lambda: None if process.poll() is None else exit_description(process.returncode),
                       service.log_tail)  # fmt: skip
        logger.info("started %s (pid %d): %s", name, service.process.pid, " ".join(service.argv))
        return service

    def _dies_with_us(self) -> bool:
        """Whether a child started now gets the kernel's SIGTERM when we die: with ``watch`` only (preexec_fn
        runs Python in the forked child, riskier among the soak's busy threads), and from the main thread only
        (the kernel signals when the forking *thread* ends; only the main thread lives as long as we do)."""
        return self.watch_children and threading.current_thread() is threading.main_thread()

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
        self.unwatch(service.name)
        self._signal(service, signal.SIGTERM)
        return self._wait_or_kill(service, grace)

    def kill(self, service: Service) -> int:
        """SIGKILL one service (a crash: no drain, no cleanup) and reap it; returns its exit code."""
        self.unwatch(service.name)
        self._signal(service, signal.SIGKILL)
        assert service.process is not None
        return service.process.wait()

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

    def watch(self, name: str, exited: Callable[[], str | None], tail: Callable[[], str]) -> None:
        """Stop the demo with ``ChildExited`` as soon as ``exited()`` says how ``name`` ended (None: running).

        Services started with ``watch=True`` are watched until they are stopped or awaited; the broker is
        watched with this. Only in the main thread, where the watchdog's SIGUSR1 can interrupt any wait.
        """
        with self._watch_lock:
            self._watched[name] = _Watched(name, exited, tail)
        if self._watchdog is None and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGUSR1, self._raise_failure)
            self._watchdog = threading.Thread(target=self._watch_loop, name="demo-watchdog", daemon=True)
            self._watchdog.start()

    def unwatch(self, name: str) -> None:
        """``name`` may exit from now on (it is being stopped, or is expected to finish by itself)."""
        with self._watch_lock:
            self._watched.pop(name, None)

    def _watch_loop(self) -> None:
        """Poll the watched children; on the first exit, record why and interrupt the main thread's wait."""
        main = threading.main_thread().ident
        assert main is not None
        while not self._closing.wait(WATCH_INTERVAL_S):
            with self._watch_lock:
                watched = list(self._watched.values())
            for child in watched:
                how = child.exited()
                if how is not None:
                    self._failure = ChildExited(
                        f"{child.name} {how} while the demo needed it; its last lines:\n"
                        f"{child.tail() or '(it wrote nothing)'}"
                    )
                    signal.pthread_kill(main, signal.SIGUSR1)
                    return

    def _raise_failure(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR1 handler: raise the watchdog's failure in the main thread, unless the stack is closing."""
        if self._failure is not None and not self._closing.is_set():
            raise self._failure

    def _stop_watchdog(self) -> None:
        self._closing.set()
        if self._watchdog is not None:
            self._watchdog.join()
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._watchdog = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self._stop_watchdog()
        finally:
            # after a crash the run is lost: no point giving the others 10 s to drain (to a dead broker, say)
            self.stop(grace=2.0 if isinstance(exc, ChildExited) else 10.0)
