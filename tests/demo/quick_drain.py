"""The demo's end, shortened for tests: its consumer drains for seconds, not the half minute a run waits."""

from __future__ import annotations

import pytest

DEMO_CONSUMER_IDLE_EXIT_S = 5
"""How long the demo's analytics consumer runs on after the last event it read, in tests (the demo's own
``CONSUMER_IDLE_EXIT_S``, 30 s, was most of a shrunk run). Its last events are the ranker's exposures, sent as
it serves (20 ms linger) and flushed by its graceful stop, about a second after the simulation's last outcome:
a drain cut before them would lose events, which the tests that count every event would see."""


def quick_demo_drain(patch: pytest.MonkeyPatch) -> None:
    """Demo runs in this process (until ``patch`` is undone) drain for ``DEMO_CONSUMER_IDLE_EXIT_S``."""
    from deploy.demo import __main__ as demo  # imported here: torch and the servers' code load with it

    patch.setattr(demo, "CONSUMER_IDLE_EXIT_S", DEMO_CONSUMER_IDLE_EXIT_S)
