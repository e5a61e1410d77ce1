"""Runs the server process(es) from ``ServerSettings``: wiring, signal handling, ``--workers N`` forking."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from analytics.events.errors import JournalError
from experiment_router.errors import ConfigError
from grpc_serving import (
    LOG_FORMAT,
    BindError,
    ClientSecurity,
    SecurityError,
    load_client_security,
    load_server_security,
)
from grpc_serving.metrics_endpoint import serve_metrics
from ranker_server.config import ServerSettings
from ranker_server.errors import RankerError, SettingsError
from ranker_server.retrieval_client import RetrievalClient, RetrievalModelCheck
from ranker_server.routing import RETRIEVAL, RouterSource
from ranker_server.server import RankerServer

if TYPE_CHECKING:
    from experiment_router.reload import ConfigWatcher
    from experiment_router.schema import RouterConfig

logger = logging.getLogger(__name__)

# what a bad flag, config, package or unwritable exposure journal ($MTRANK_DATA_DIR) raises at start
STARTUP_ERRORS = (RankerError, ConfigError, BindError, JournalError)


def upstream_security(settings: ServerSettings) -> ClientSecurity:
    """TLS credentials and call metadata for the retrieval service (``--retrieval-tls-ca``, ``--retrieval-token-file``).

    Raises:
        SettingsError: a file is unreadable or empty.
    """
    try:
        return load_client_security(settings.retrieval_tls_ca, settings.retrieval_token_file, "--retrieval")
    except SecurityError as exc:
        raise SettingsError(str(exc)) from None


@contextlib.contextmanager
def watched_router(
    settings: ServerSettings, upstream: ClientSecurity | None = None
) -> Iterator[ConfigWatcher]:
    """The experiment router for ``settings.experiments``, reloaded when the file changes (once it settles).

    A config naming a ranking model absent from the repository, or a retrieval model the retrieval service does
    not serve (asked with ``ListModels``), is rejected: at start with file, key and line; later the previous
    config stays in force, as ``ConfigWatcher`` guarantees. While the retrieval service cannot be asked, a
    new config waits (retried every poll); at start it is accepted unchecked, with a warning, so that the
    services may start in any order.
    """
    from experiment_router.loader import repository_tasks
    from experiment_router.reload import ConfigWatcher

    check = RetrievalModelCheck(settings.retrieval, upstream) if settings.retrieval else None

    def model_exists(stage: str, name: str, version: str) -> bool:
        if stage == RETRIEVAL:
            return check is None or check(name, version)  # without retrieval, retrieval payloads never act
        return (settings.repository / name / version / "manifest.json").is_file()

    try:
        watcher = ConfigWatcher(
            settings.experiments,
            interval_s=settings.poll_interval_s,
            model_exists=model_exists,
            ranking_tasks=repository_tasks(settings.repository),
        )
        if check is not None:
            check.strict = True
        watcher.start()
        try:
            yield watcher
        finally:
            watcher.stop()
    finally:
        if check is not None:
            check.close()


@contextlib.asynccontextmanager
async def running_server(
    settings: ServerSettings, source: RouterSource, worker: int = 0, upstream: ClientSecurity | None = None
) -> AsyncIterator[RankerServer]:
    """Start a fully wired server; stop it (gracefully) on exit. ``worker`` keeps journals apart; ``upstream``
    defaults to ``upstream_security(settings)``."""
    try:
        security = load_server_security(settings.tls_cert, settings.tls_key, settings.auth_token_file, "ranker")
    except SecurityError as exc:
        raise SettingsError(str(exc)) from None
    if upstream is None:
        upstream = upstream_security(settings)
    producer = None
    if settings.kafka:
        from analytics.events.producer import EventProducer

        producer = EventProducer(
            settings.kafka, exposures_topic=settings.exposure_topic, client_id=f"mtrank-ranker-{worker}"
        )
    retrieval = RetrievalClient(settings.retrieval, upstream) if settings.retrieval else None
    server = RankerServer(settings, source, producer, retrieval, security.token, security.credentials)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        if retrieval is not None:
            await retrieval.close()
        if producer is not None:  # close() waits for Kafka (about 20 s while it is away): not on the loop
            await asyncio.to_thread(producer.close)


def configuration_text(settings: ServerSettings, config: RouterConfig, metrics_port: int | None) -> str:
    """What the server runs with besides its models, for the start log: experiments, retrieval, Kafka and
    metrics."""
    running = [e.key for e in config.experiments if e.status == "running"]
    exposures = f"to {settings.kafka} topic {settings.exposure_topic}" if settings.kafka else "off"
    return (
        f"experiments {settings.experiments} ({len(running)} running: {', '.join(running) or 'none'}); "
        f"retrieval {settings.retrieval or 'off'}; exposures {exposures}; "
        f"metrics {'off' if metrics_port is None else f'{settings.host}:{metrics_port}'}"
    )


def unserved_retrieval_experiments(settings: ServerSettings, config: RouterConfig) -> list[str]:
    """Running retrieval-stage experiments that cannot act: without ``--retrieval`` requests bring their
    candidates, so these variants never serve and get no exposures."""
    if settings.retrieval:
        return []
    return [e.key for e in config.experiments if e.status == "running" and e.stage == RETRIEVAL]


async def serve(settings: ServerSettings, worker: int = 0) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully."""
    port = settings.metrics_port
    http = serve_metrics(port + worker if port else port, settings.host)  # 0 stays 0: any free port each
    metrics_port = http.server_port if http is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    upstream = upstream_security(settings)
    with watched_router(settings, upstream) as source:
        async with running_server(settings, source, worker, upstream):
            config = source.current.config
            logger.info("worker %d: %s", worker, configuration_text(settings, config, metrics_port))
            unserved = unserved_retrieval_experiments(settings, config)
            if unserved:
                logger.warning(
                    "experiments %s run in the retrieval stage but --retrieval is not set: requests must "
                    "bring their candidates, so these variants never serve and their experiments get no "
                    "exposures",
                    ", ".join(unserved),
                )
            await stop.wait()
            logger.info("worker %d: shutting down", worker)


def _run_loop(settings: ServerSettings, worker: int = 0) -> None:
    """``serve`` on the configured event loop (grpc.aio runs on uvloop as on asyncio's own)."""
    if settings.event_loop == "asyncio":
        asyncio.run(serve(settings, worker))
        return
    try:
        import uvloop
    except ImportError:
        raise SettingsError("--event-loop uvloop: the uvloop package is not installed (or use asyncio)") from None
    uvloop.run(serve(settings, worker))


def _worker_main(settings: ServerSettings, worker: int) -> None:
    tagged = logging.Formatter(LOG_FORMAT.replace("%(levelname)s", f"w{worker} %(levelname)s"))
    logging.basicConfig(level=logging.INFO)  # when run() is called without python -m's logging set up
    for handler in logging.getLogger().handlers:  # python -m ranker_server's, and its level, through fork
        handler.setFormatter(tagged)
    try:
        _run_loop(settings, worker)
    except STARTUP_ERRORS as exc:  # one line, as ``python -m ranker_server`` prints it, not a traceback
        print(f"ranker_server: worker {worker}: {exc}", file=sys.stderr)
        sys.exit(2)


def _exit_status(process: multiprocessing.process.BaseProcess, stopped: bool) -> int:
    """A worker's exit status, 128 + the signal for one a signal killed, except the SIGTERM of a worker that was
    ``stopped`` (before its event loop took over SIGTERM, the default action ends it)."""
    code = process.exitcode or 0
    if stopped and code == -signal.SIGTERM:
        return 0
    return 128 - code if code < 0 else code


def run(settings: ServerSettings) -> int:
    """Run one server, or fork ``settings.workers`` processes sharing the port (SO_REUSEPORT).

    The fork happens before any gRPC server or channel exists in this process, as gRPC requires. When one worker
    ends (a bad config or package at start, a crash, a kill), the others are stopped gracefully and the status
    is the worst of theirs: a process manager then sees the failure instead of a server at part capacity.
    """
    import onnxruntime

    # onnxruntime-gpu without usable CUDA logs a warning besides the error that says why, for every session;
    # the ranker logs the provider each session got instead (as retrieval_server does).
    onnxruntime.set_default_logger_severity(3)
    if settings.workers == 1:
        _run_loop(settings)
        return 0
    if settings.port == 0:
        raise SettingsError("--workers > 1 needs a fixed --port (the workers share it)")
    if settings.runtime.intra_op_threads == 0:  # split the cores between workers instead of oversubscribing
        threads = max(1, len(os.sched_getaffinity(0)) // settings.workers)
        runtime = settings.runtime.model_copy(update={"intra_op_threads": threads})
        settings = settings.model_copy(update={"runtime": runtime})
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_worker_main, args=(settings, i), daemon=False)
        for i in range(settings.workers)
    ]
    for process in workers:
        process.start()

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:  # each worker drains gracefully on SIGTERM
            if process.is_alive():
                process.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    running, status = list(workers), 0
    while running:
        ended = multiprocessing.connection.wait([p.sentinel for p in running])
        for process in [p for p in running if p.sentinel in ended]:
            process.join()
            running.remove(process)
            code = _exit_status(process, stopping)
            if not stopping:  # the workers end as one, so that a supervisor restarts the whole capacity
                logger.error("worker %d ended (status %d); stopping the others", workers.index(process), code)
                forward(signal.SIGTERM, None)
            status = max(status, code)
    return status
