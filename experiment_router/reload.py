"""Hot reload: watch a config file and swap in a whole new Router when it changes.

Readers take `watcher.current` once per request; a reload replaces that reference atomically, so a request
never sees half of an old config and half of a new one. A bad new file is rejected and the old Router stays.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter

from experiment_router.errors import ConfigError
from experiment_router.loader import ModelExists
from experiment_router.router import Router
from experiment_router.sticky import StickyBucketStore

logger = logging.getLogger(__name__)

RELOADS = Counter(
    "mtrank_router_config_reload",
    "Experiment config reload attempts by result",
    ["result"],
)


class ConfigWatcher:
    """Polls a config file's mtime and content hash from a daemon thread.

    Args:
        path: the experiment config file.
        interval_s: seconds between polls.
        on_error: called with the ConfigError of a rejected file (after it is logged and counted).
        on_reload: called with the new Router after a successful swap.
        model_exists: passed to validation, as for Router.from_file.
        sticky_store: shared by every Router this watcher builds, so sticky buckets survive reloads.

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
        sticky_store: StickyBucketStore | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self._on_error = on_error
        self._on_reload = on_reload
        self._model_exists = model_exists
        self._sticky_store = sticky_store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        text, self._mtime = self._read()
        self._digest = hashlib.sha256(text.encode()).hexdigest()
        self._current = self._build(text)

    @property
    def current(self) -> Router:
        """The active Router (take it once per request)."""
        return self._current

    def _read(self) -> tuple[str, int]:
        try:
            mtime = os.stat(self.path).st_mtime_ns
            return self.path.read_text(encoding="utf-8"), mtime
        except OSError as exc:
            raise ConfigError(f"cannot read config: {exc.strerror}", file=str(self.path)) from None

    def _build(self, text: str) -> Router:
        return Router.from_file(
            self.path, model_exists=self._model_exists, sticky_store=self._sticky_store, text=text
        )

    def check_now(self) -> bool:
        """Reload if the file changed; returns True when a new Router was swapped in."""
        with self._lock:
            try:
                mtime = os.stat(self.path).st_mtime_ns
            except OSError as exc:
                self._reject(ConfigError(f"cannot read config: {exc.strerror}", file=str(self.path)))
                return False
            if mtime == self._mtime:
                return False
            try:
                text, mtime = self._read()
            except ConfigError as exc:
                self._reject(exc)
                return False
            digest = hashlib.sha256(text.encode()).hexdigest()
            self._mtime = mtime
            if digest == self._digest:
                return False
            try:
                router = self._build(text)
            except ConfigError as exc:
                self._digest = digest  # do not re-log the same bad file on every poll
                self._reject(exc)
                return False
            self._digest = digest
            self._current = router
        RELOADS.labels(result="success").inc()
        logger.info("experiment config %s reloaded: %d experiments", self.path, len(router.experiment_keys))
        if self._on_reload is not None:
            self._on_reload(router)
        return True

    def _reject(self, exc: ConfigError) -> None:
        RELOADS.labels(result="failure").inc()
        logger.error("experiment config %s rejected, keeping the previous one: %s", self.path, exc.describe())
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
