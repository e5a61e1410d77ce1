"""Hot reload: watch a config file and swap in a whole new Router when it changes.

Readers take `watcher.current` once per request; a reload replaces that reference atomically, so a request
never sees half of an old config and half of a new one. A bad new file is rejected and the old Router stays.

A change is applied only once the file has kept the same content for ``settle_s`` (debounce): an editor or a
copy that writes the file in several steps can be caught half-way, and a truncated file may well be valid
YAML that simply lacks an experiment, whose model would then be unloaded. A change is noticed by the file's
mtime, size or inode (an atomic replace by a file whose mtime was kept, as ``cp -p``, ``tar`` or ``rsync -t``
leave it, changes the inode), and a pending change is read again at every poll until it is applied: the kernel
stamps mtimes from a clock that ticks every few milliseconds, so the rest of a write caught half-way can land
within the same tick and leave mtime and inode as they were. A file that cannot be read (deleted, moved away)
or a rejected one is reported once, not at every poll; the previous config stays in force. When a model
check cannot be answered (``ModelCheckUnavailable``: the retrieval service is down), the new file is neither
applied nor rejected: the previous config stays and the file is tried again at the next poll.

Every applied config is logged and exported (``mtrank_router_config_info{path, sha256}``) with the sha256 of
its text, so logs and dashboards say which version is live. A reload that moves users of a running experiment
from one variant to another (new weights, variations, seed or hashing: no sticky buckets are kept) is logged
as a warning with the share of users that switch (``experiment_router.changes``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter, Info

from experiment_router.changes import compare, describe
from experiment_router.errors import ConfigError, ConfigErrors, ModelCheckUnavailable
from experiment_router.loader import ModelExists, RankingTasks, read_config_text
from experiment_router.router import Router
from experiment_router.sticky import StickyBucketStore

logger = logging.getLogger(__name__)

RELOADS = Counter(
    "mtrank_router_config_reload",
    "Experiment config reload attempts by result",
    ["result"],
)
LIVE = Info("mtrank_router_config", "The experiment config in force: the sha256 of its text", ["path"])


class ConfigWatcher:
    """Polls a config file's mtime and content hash from a daemon thread.

    Args:
        path: the experiment config file.
        interval_s: seconds between polls.
        on_error: called with the ConfigError of a rejected file (after it is logged and counted).
        on_reload: called with the new Router after a successful swap.
        model_exists: passed to validation, as for Router.from_file; may raise ``ModelCheckUnavailable``
            (a reload is then retried at the next poll).
        ranking_tasks: passed to validation, as for Router.from_file.
        sticky_store: shared by every Router this watcher builds, so sticky buckets survive reloads.
        settle_s: how long a changed file must keep the same content before it is applied (0: at once).

    Raises:
        ConfigError: at construction when the initial file is invalid (there is nothing to fall back to).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        interval_s: float = 2.0,
        on_error: Callable[[ConfigError], None] | None = None,
        on_reload: Callable[[Router], None] | None = None,
        model_exists: ModelExists | None = None,
        ranking_tasks: RankingTasks | None = None,
        sticky_store: StickyBucketStore | None = None,
        settle_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.settle_s = settle_s
        self._on_error = on_error
        self._on_reload = on_reload
        self._model_exists = model_exists
        self._ranking_tasks = ranking_tasks
        self._sticky_store = sticky_store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        text, self._stamp = self._read()
        self._problem: str | None = None  # the last reported read problem, reported once
        self._digest = hashlib.sha256(text.encode()).hexdigest()
        # a change seen but not applied yet: (digest, text, when first seen with that content)
        self._pending: tuple[str, str, float] | None = None
        self._deferred_digest: str | None = None  # last content whose model check could not run (logged once)
        self._current = self._build(text)
        self._applied("loaded", self._digest, self._current)

    @property
    def current(self) -> Router:
        """The active Router (take it once per request)."""
        return self._current

    def _stat(self) -> tuple[int, int, int]:
        """What tells that the file changed: mtime, size, inode (raises OSError)."""
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> tuple[str, tuple[int, int, int]]:
        try:
            stamp = self._stat()
        except OSError as exc:
            raise ConfigError(f"cannot read config: {exc.strerror}", file=str(self.path)) from None
        return read_config_text(self.path), stamp

    def _build(self, text: str) -> Router:
        return Router.from_file(
            self.path,
            model_exists=self._model_exists,
            ranking_tasks=self._ranking_tasks,
            sticky_store=self._sticky_store,
            text=text,
        )

    def check_now(self) -> bool:
        """Reload if the file changed and has settled; returns True when a new Router was swapped in."""
        with self._lock:
            try:
                stamp = self._stat()
            except OSError as exc:
                self._unreadable(ConfigError(f"cannot read config: {exc.strerror}", file=str(self.path)))
                return False
            if stamp != self._stamp or self._pending is not None:
                try:
                    text, stamp = self._read()
                except ConfigError as exc:
                    self._unreadable(exc)
                    return False
                self._stamp, self._problem = stamp, None
                digest = hashlib.sha256(text.encode()).hexdigest()
                if digest == self._digest:  # back to what is in force (or was last rejected)
                    self._pending = None
                    return False
                if self._pending is None or self._pending[0] != digest:
                    self._pending = (digest, text, time.monotonic())  # (re)start the settle period
            if self._pending is None:
                return False
            digest, text, seen = self._pending
            if time.monotonic() - seen < self.settle_s:
                return False
            try:
                router = self._build(text)
            except ModelCheckUnavailable as exc:
                self._defer(digest, exc)
                return False
            except ConfigError as exc:
                self._digest, self._pending = digest, None  # do not re-log the same bad file on every poll
                self._reject(exc)
                return False
            old, self._digest, self._pending, self._current = self._current, digest, None, router
        RELOADS.labels(result="success").inc()
        self._applied("reloaded", digest, router)
        self._warn_switches(old, router)
        if self._on_reload is not None:
            self._on_reload(router)
        return True

    def _applied(self, how: str, digest: str, router: Router) -> None:
        """Export and log the config now in force (at start too: a server that never reloads would otherwise
        leave no log line saying which config is live)."""
        LIVE.labels(path=str(self.path)).info({"sha256": digest})
        logger.info(
            "experiment config %s %s: sha256 %s, %d experiments",
            self.path,
            how,
            digest,
            len(router.experiment_keys),
        )

    def _warn_switches(self, old: Router, new: Router) -> None:
        """Warn about running experiments whose users the new config moves to another variant."""
        running = {e.key for e in new.config.experiments if e.status == "running"}
        for change in compare(old, new, now=time.time()):
            if change.switched and change.key in running:
                logger.warning(
                    "experiment config %s: %s; exposures log the new variant, analysis keeps each user in the "
                    "first variant it logged (to re-randomise, give the experiment a new key)",
                    self.path,
                    describe(change),
                )

    def _defer(self, digest: str, exc: ModelCheckUnavailable) -> None:
        """Keep the change pending: the previous config stays, the file is tried again at the next poll."""
        RELOADS.labels(result="deferred").inc()
        if self._deferred_digest != digest:
            self._deferred_digest = digest
            logger.warning(
                "experiment config %s not applied yet, keeping the previous one: %s; retrying every %.1f s",
                self.path,
                exc,
                self.interval_s,
            )

    def _unreadable(self, exc: ConfigError) -> None:
        """Report a file that cannot be read once (it was logged and counted at every poll while deleted)."""
        if exc.describe() != self._problem:
            self._problem = exc.describe()
            self._reject(exc)

    def _reject(self, exc: ConfigError) -> None:
        """Count the rejection once and log each problem as a record of its own: one record with a line per
        problem left every line after the first without time, level or logger in a line-based log."""
        RELOADS.labels(result="failure").inc()
        for problem in exc.errors if isinstance(exc, ConfigErrors) else [exc]:
            logger.error(
                "experiment config %s rejected, keeping the previous one: %s", self.path, problem.describe()
            )
        if self._on_error is not None:
            self._on_error(exc)

    def start(self) -> ConfigWatcher:
        """Start polling in a daemon thread; returns self."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name=f"config-watcher:{self.path.name}", daemon=True
            )
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_now()
            except Exception:  # the watcher must outlive any surprise; it keeps the old Router
                logger.exception("unexpected error while reloading %s", self.path)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ConfigWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
