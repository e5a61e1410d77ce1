"""analytics: event pipeline, metric definitions and the A/B statistics engine.

Kept light on purpose: importing ``analytics`` must not pull in scipy or statsmodels, so the event producer
can be used from the serving processes. Import ``analytics.stats`` or ``analytics.report`` explicitly.
"""


class AnalyticsError(Exception):
    """Root of every error raised by the analytics package."""
