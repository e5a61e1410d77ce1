"""How the plain-text reports (``python -m analytics report``, the demo) print numbers: one place, so the A/B
and interleaving tables read alike."""

from __future__ import annotations

from collections.abc import Sequence


def number(value: float | None, pattern: str) -> str:
    """``value`` in ``pattern`` (a format spec), "-" when there is none."""
    return "-" if value is None else format(value, pattern)


def p_value(value: float | None) -> str:
    """A p-value with four decimals; "<0.0001" below that."""
    return "<0.0001" if value is not None and value < 1e-4 else number(value, ".4f")


def interval(ci: Sequence[float | None] | None, pattern: str) -> str:
    """``[low, high]`` in ``pattern``, "-" when there is none or an end is missing."""
    return "-" if ci is None or None in ci else f"[{format(ci[0], pattern)}, {format(ci[1], pattern)}]"
