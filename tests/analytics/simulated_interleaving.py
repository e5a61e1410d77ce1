"""A seeded interleaving experiment written into a real EventStore through ``apply``, as the consumer writes it."""

from __future__ import annotations

import numpy as np

from analytics.store import EventStore, ExposureRow, OutcomeRow
from analytics.store.base import InterleavedRow, ItemOutcomeRow

START_MS = 1_795_000_000_000
DAY_MS = 86_400_000
ARMS = (("control", "mmoe", "1"), ("treatment", "mmoe+dml", "1"))


def simulate_interleaving(
    store: EventStore,
    experiment_key: str = "ranking-interleave",
    users: int = 600,
    seed: int = 0,
    click_prob: tuple[float, float] = (0.04, 0.06),
    requests: tuple[int, int] = (1, 4),
    days: int = 7,
    first_user: int = 0,
    arms: tuple[tuple[str, str, str], tuple[str, str, str]] = ARMS,
) -> None:
    """Users first exposed over ``days``, each with 1-3 interleaved feeds of 10 items (a team-draft-like
    alternation, A or B first by coin); every shown item is clicked with its arm's probability."""
    rng = np.random.default_rng(seed)
    exposed = START_MS + np.sort(rng.integers(0, days * DAY_MS, size=users))
    exposures, outcomes, interleaved, item_outcomes = [], [], [], []
    for i in range(users):
        user = f"{experiment_key}-{first_user + i:06d}"
        for r in range(int(rng.integers(*requests))):
            request, ts = f"{user}-r{r}", int(exposed[i]) + r * 60_000
            first = int(rng.integers(0, 2))
            teams = [(first + k) % 2 for k in range(10)]
            items = (rng.choice(10_000, 10, replace=False) + 1).tolist()
            event_id = f"{request}-x"
            exposures.append(ExposureRow(event_id, experiment_key, "interleaved", user, ts))
            interleaved.append(
                InterleavedRow(event_id, experiment_key, user, request, ts, items, teams, *arms[0], *arms[1])
            )
            for k, (item, team) in enumerate(zip(items, teams, strict=True)):
                if rng.random() < click_prob[team]:
                    click = (f"{request}-c{k}", user, request, item, "click", ts + 1_000 + k)
                    item_outcomes.append(ItemOutcomeRow(*click))
                    outcomes.append(OutcomeRow(click[0], user, "click", click[5], 1.0))
    store.apply(exposures, outcomes, {}, interleaved=interleaved, item_outcomes=item_outcomes)
