"""The analysis window of an experiment: which users and outcomes one report reads.

An experiment whose split or variations changed while it ran (a ramp, a restart, a bug fix) mixes phases; a
window analyses one of them. A user is in the analysis when their first exposure to the experiment, ever,
lies in ``[start_ms, end_ms)``: a user first exposed before the start stays out even when exposed again
inside, so the window is a clean cohort with one allocation. Their outcomes count from their first exposure
(as always) and before ``end_ms``. Every store applies the same rules (``EventStore`` queries take a
``window``). The config sets it (``experiments.<key>.start`` / ``end``); ``python -m analytics report`` takes
``--start`` / ``--end`` in place of either bound for one report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class AnalysisWindow:
    """``[start_ms, end_ms)`` in milliseconds since the Unix epoch; None: no bound on that side."""

    start_ms: int | None = None
    end_ms: int | None = None

    @property
    def bounded(self) -> bool:
        """True when the window leaves something out (a start or an end is set)."""
        return self.start_ms is not None or self.end_ms is not None

    def admits(self, first_ms: int) -> bool:
        """Whether a user first exposed at ``first_ms`` is in the analysis."""
        return (self.start_ms is None or first_ms >= self.start_ms) and self.before_end(first_ms)

    def before_end(self, ts: float) -> bool:
        """Whether an event at ``ts`` is before the end (outcomes at or after it do not count)."""
        return self.end_ms is None or ts < self.end_ms

    def describe(self) -> str:
        """``start .. end`` in ISO 8601 UTC, "..." where a side is open (for the text reports)."""
        return f"{iso_ms(self.start_ms)} .. {iso_ms(self.end_ms)}"


ALL_TIME = AnalysisWindow()
"""No window: every exposure and outcome the store holds."""


def iso_ms(ms: int | None) -> str:
    """Epoch milliseconds as ISO 8601 UTC ("..." for None: an open side)."""
    if ms is None:
        return "..."
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
