"""Error codes carried by results for expected data problems (never raised as exceptions)."""

NO_UNITS = "NO_UNITS"
"""An arm has fewer than two units, so no variance can be estimated."""

ZERO_VARIANCE = "ZERO_VARIANCE"
"""The difference has no standard error: both arms are constant, or (relative lift) treatment is all zeros."""

BASELINE_ZERO = "BASELINE_ZERO"
"""The control mean is zero, so a relative lift is undefined."""

BASELINE_NEGATIVE = "BASELINE_NEGATIVE"
"""The control mean is negative: mean_b / mean_a - 1 would point the other way (a treatment mean above a
negative control mean gives a negative lift), so a relative lift is not reported; an absolute one is."""

DENOMINATOR_ZERO = "DENOMINATOR_ZERO"
"""A ratio metric's denominator sums to zero in an arm."""

NUMERIC_OVERFLOW = "NUMERIC_OVERFLOW"
"""A mean, variance or the lift's variance is not a finite float64 (values so large that sums of squares
overflow, e.g. an outcome of 1e308)."""
NO_CLICKS = "NO_CLICKS"
"""Interleaving: no user has a credited click yet, so no preference can be measured."""

MESSAGES: dict[str, str] = {
    NO_UNITS: "an arm has fewer than 2 units",
    ZERO_VARIANCE: "the lift has zero variance (both arms constant, or no events in treatment)",
    BASELINE_ZERO: "control mean is 0: relative lift undefined",
    BASELINE_NEGATIVE: "control mean is negative: a relative lift would point the wrong way (use absolute)",
    DENOMINATOR_ZERO: "ratio denominator sums to 0",
    NUMERIC_OVERFLOW: "values too large for float64 statistics (a sum of squares overflows)",
    NO_CLICKS: "no user has a credited click yet",
}

INTERLEAVING_MESSAGES: dict[str, str] = {
    **MESSAGES,  # the A/B texts speak of arms of units and of a lift; interleaving has one group of users
    NO_UNITS: "fewer than 2 users to estimate a variance from (credit test: exposed users; sequential "
    "preference test: users with a credited click)",
    ZERO_VARIANCE: "no variance to test: every user with a credited click is tied (preference test), "
    "or every user has the same credit difference (credit test)",
}
"""The texts of the codes an interleaving report shows (``analytics.stats.interleaving``'s tests)."""
