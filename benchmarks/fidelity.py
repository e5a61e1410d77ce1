"""Paired-seed statistics and target verdicts shared by the model-fidelity reports (issue #16).

A target is a paired effect (variant − baseline over the same seeds) that must beat zero by more than two
standard errors, optionally with a guard metric that must not be worse by more than two standard errors. With
fewer than ``MIN_SEEDS`` paired seeds no verdict is given ("not measured"); below ``REQUIRED_SEEDS`` the
verdict is given but marked provisional, because a standard error from three values is itself very noisy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

MIN_SEEDS = 3
REQUIRED_SEEDS = 5
REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"


@dataclass(frozen=True)
class Paired:
    """Mean and standard error of paired per-seed deltas."""

    mean: float
    se: float
    n: int
    deltas: tuple[float, ...] = ()

    def text(self) -> str:
        if self.n == 0:
            return "— (n=0)"
        return f"{self.mean:+.4f}" + (f" ± {self.se:.4f}" if self.n > 1 else "") + f" (n={self.n})"

    def per_seed(self) -> str:
        """The deltas one by one, in seed order (what a mean over two or three seeds hides)."""
        return ", ".join(f"{d:+.4f}" for d in self.deltas)


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str

    def text(self) -> str:
        return f"**{self.status}**: {self.reason}"


def paired(deltas: Sequence[float]) -> Paired:
    """Mean ± standard error (sd / √n, ddof 1) of per-seed deltas (in seed order); se is NaN below two seeds."""
    d = np.asarray(deltas, dtype=float)
    if len(d) == 0:
        return Paired(math.nan, math.nan, 0)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return Paired(float(d.mean()), se, len(d), tuple(float(x) for x in d))


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` over seeds (just the value for one seed)."""
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def significant(effect: Paired, better: Literal["lower", "higher"]) -> bool:
    """The delta is on the better side of zero by more than two standard errors."""
    gain = -effect.mean if better == "lower" else effect.mean
    return effect.n > 1 and gain > 2 * effect.se


def one_sided_p(effect: Paired, better: Literal["lower", "higher"]) -> float:
    """P-value of a paired t-test that the delta is on the better side of zero: 2 se means little at n = 3."""
    gain = -effect.mean if better == "lower" else effect.mean
    return float(stats.t.sf(gain / effect.se, effect.n - 1)) if effect.se > 0 else float(gain <= 0)


def verdict(
    effect: Paired,
    better: Literal["lower", "higher"],
    guard: Paired | None = None,
    guard_better: Literal["lower", "higher"] = "higher",
) -> Verdict:
    """Reproduced when ``effect`` is significant and ``guard`` is not significantly worse."""
    if effect.n < MIN_SEEDS:
        return Verdict(NOT_MEASURED, f"{effect.n} paired seed(s), a verdict needs >= {MIN_SEEDS}")
    note = f"; provisional: {effect.n} of {REQUIRED_SEEDS} seeds" if effect.n < REQUIRED_SEEDS else ""
    note += f"; one-sided p = {one_sided_p(effect, better):.3f} (Student t, {effect.n - 1} df)"
    if not significant(effect, better):
        return Verdict(NOT_REPRODUCED, f"Δ {effect.text()} is not {better} by > 2 se{note}")
    worse = "higher" if guard_better == "lower" else "lower"
    if guard is not None and significant(guard, worse):
        return Verdict(NOT_REPRODUCED, f"the guard metric is {worse} by > 2 se: {guard.text()}{note}")
    return Verdict(REPRODUCED, f"Δ {effect.text()} is {better} by > 2 se{note}")


def combine(verdicts: Sequence[Verdict]) -> str:
    """A target made of several parts: reproduced only if every part is, not reproduced if any part is not."""
    statuses = {v.status for v in verdicts}
    if NOT_REPRODUCED in statuses:
        return NOT_REPRODUCED
    if statuses == {REPRODUCED}:
        return REPRODUCED
    return NOT_MEASURED
