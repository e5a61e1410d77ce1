"""argparse ``type=`` functions for the numeric flags of every command line (servers, consumer, dashboard): a
bad value is a usage error naming the flag (``argument --grace: must be >= 0, got 'nan'``), raised while
parsing, before anything starts. NaN and infinity are refused: NaN passes no comparison, so it slipped through
checks written as ``if value < 0``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(
    kind: type[int] | type[float], least: float, most: float | None = None, *, above: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` in ``[least, most]`` (``(least, most]`` when ``above``)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        low_ok = value > least if above else value >= least
        if not (low_ok and value <= (most if most is not None else math.inf)) or not math.isfinite(value):
            bounds = f"in {least}..{most}" if most is not None else f"{'>' if above else '>='} {least}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text!r}")
        return value

    return parse


PORT = number(int, 0, 65535)
"""A TCP port; 0 asks the system for any free one."""
POSITIVE_INT = number(int, 1)
POSITIVE = number(float, 0, above=True)
"""A float > 0 (timeouts, intervals)."""
NON_NEGATIVE = number(float, 0)
"""A float >= 0 (grace periods, where 0 means at once)."""
