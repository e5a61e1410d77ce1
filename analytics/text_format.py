"""How the plain-text reports (``python -m analytics report``, the demo) print names and numbers: one place,
so the A/B and interleaving tables read alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from analytics.analysis_window import AnalysisWindow


def name(value: object) -> str:
    """``value`` as text with every non-printable character escaped (``\\x1b``, ``\\n``, ``\\u202e``...).

    Experiment, variant and model names come from events (Kafka, not trusted): printed raw, a control or
    escape sequence in one would move the cursor, recolour or clear the analyst's terminal, or break a row.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def number(value: float | None, pattern: str) -> str:
    """``value`` in ``pattern`` (a format spec), "-" when there is none."""
    return "-" if value is None else format(value, pattern)


def p_value(value: float | None) -> str:
    """A p-value with four decimals; "<0.0001" below that."""
    return "<0.0001" if value is not None and value < 1e-4 else number(value, ".4f")


def interval(ci: Sequence[float | None] | None, pattern: str) -> str:
    """``[low, high]`` in ``pattern``, "-" when there is none or an end is missing."""
    return "-" if ci is None or None in ci else f"[{format(ci[0], pattern)}, {format(ci[1], pattern)}]"


def columns(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One table line: each cell right-aligned in its width (left-aligned where the width is negative), one
    space between cells, so a value as wide as its column (``5.9943e-09``) never runs into the next one."""
    return " ".join(
        f"{cell:<{-width}}" if width < 0 else f"{cell:>{width}}"
        for cell, width in zip(cells, widths, strict=True)
    )


def window_lines(report: Mapping[str, Any]) -> list[str]:
    """The line that says a report covers one analysis window only (none when its config sets no window)."""
    window = report.get("analysis_window")
    if not window:
        return []
    bounds = AnalysisWindow(window["start_ms"], window["end_ms"]).describe()
    return [f"analysis window {bounds} (users first exposed in it, their outcomes before its end)"]
