"""A seeded simulated experiment written into a real EventStore (memory or SQLite) through ``apply``."""

from __future__ import annotations

import numpy as np

from analytics.store import EventStore, ExposureRow, OutcomeRow

START_MS = 1_790_000_000_000
HOUR_MS = 3_600_000


def simulate_experiment(
    store: EventStore,
    experiment_key: str = "exp",
    users: int = 2000,
    seed: int = 0,
    variants: tuple[str, ...] = ("control", "treatment"),
    weights: tuple[float, ...] = (0.5, 0.5),
    click_rate: tuple[float, ...] = (0.10, 0.13),
    watch_scale: tuple[float, ...] = (10.0, 11.0),
) -> None:
    """Users exposed over 24 hours; per user: impressions, clicks per impression, pre and post watch time."""
    rng = np.random.default_rng(seed)
    assignment = rng.choice(len(variants), size=users, p=np.asarray(weights) / sum(weights))
    exposed_ms = START_MS + np.sort(rng.integers(0, 24 * HOUR_MS, size=users))
    exposures, outcomes = [], []
    for i in range(users):
        user, v, t = f"{experiment_key}-u{i:06d}", int(assignment[i]), int(exposed_ms[i])
        exposures.append(ExposureRow(f"{user}-x", experiment_key, variants[v], user, t))
        habit = rng.exponential(1.0)
        outcomes.append(OutcomeRow(f"{user}-pre", user, "watch", t - HOUR_MS, float(watch_scale[0] * habit)))
        outcomes.append(
            OutcomeRow(
                f"{user}-w",
                user,
                "watch",
                t + 2000,
                float(watch_scale[v] * (0.7 * habit + 0.3 * rng.exponential())),
            )
        )
        impressions = int(rng.poisson(3))
        clicks = int(rng.binomial(impressions, click_rate[v]))
        outcomes += [
            OutcomeRow(f"{user}-i{k}", user, "impression", t + 1000 + k, 1.0) for k in range(impressions)
        ]
        outcomes += [OutcomeRow(f"{user}-c{k}", user, "click", t + 1500 + k, 1.0) for k in range(clicks)]
    store.apply(exposures, outcomes, {})
