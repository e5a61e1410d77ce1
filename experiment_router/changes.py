"""What a config change does to the users of experiments that both configs have: who keeps their variant.

Without a sticky bucket store (the ranker keeps none), a user's variant is recomputed from the config on
every request, so changing the weights, the variations, the seed or the hashing of a running experiment moves
users from one variant to another mid-experiment. ``compare`` measures that on a sample of synthetic ids with
``Router.assign_many``, so an owner (``preview --compare-to``) and the hot reload (its warning) can say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiment_router.router import Router
from experiment_router.schema import INTERLEAVED, ExperimentConfig

SAMPLE_IDS: tuple[str, ...] = tuple(f"user-{i}" for i in range(10_000))
"""The ids the hot reload compares two configs on (the ids ``preview`` uses, so their numbers agree)."""


@dataclass(frozen=True)
class ExperimentChange:
    """How the users of one experiment move between two configs (out of ``users`` sampled ids)."""

    key: str
    users: int
    kept: int
    """in the same variant in both"""
    switched: int
    """in the experiment in both, in another variant (by variant key)"""
    left: int
    """in the experiment before, outside it after (served the stage default, no exposure)"""
    entered: int
    """outside before, in it after"""


def variant_buckets(exp: ExperimentConfig, chosen: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The variant keys ``exp``'s users are counted under and each user's index into them (-1: outside), from
    ``assign_many``'s variation indices. An interleaving experiment has one bucket: its users see both arms
    (QA users forced into one count in it)."""
    if exp.kind == "interleaving":
        return [INTERLEAVED], np.minimum(chosen, 0)
    return [v.key for v in exp.variations], chosen


def _variant_of(exp: ExperimentConfig, chosen: np.ndarray) -> np.ndarray:
    """Each user's variant key, None outside the experiment."""
    keys, index = variant_buckets(exp, chosen)
    return np.array([*keys, None], dtype=object)[index]  # index -1 takes the None


def compare(
    old: Router,
    new: Router,
    user_ids: Sequence[str] = SAMPLE_IDS,
    attributes: Mapping[str, Any] | None = None,
    *,
    now: float = 0.0,
    after: Mapping[str, np.ndarray] | None = None,
) -> list[ExperimentChange]:
    """For each experiment key in both configs (in ``new``'s order), how ``user_ids`` (sharing
    ``attributes``) move from ``old`` to ``new`` at Unix time ``now``, without sticky buckets (as
    ``assign_many``). ``after``: ``new.assign_many`` of the same users, when the caller has it already."""
    before_config = {e.key: e for e in old.config.experiments}
    common = [e for e in new.config.experiments if e.key in before_config]
    if not common:
        return []
    before = old.assign_many(user_ids, attributes, now=now)
    if after is None:
        after = new.assign_many(user_ids, attributes, now=now)
    changes = []
    for exp in common:
        was = _variant_of(before_config[exp.key], before[exp.key])
        now_in = _variant_of(exp, after[exp.key])
        inside_before, inside_after = was != None, now_in != None  # noqa: E711 (element-wise on objects)
        both = inside_before & inside_after
        same = int(np.sum(both & (was == now_in)))
        changes.append(
            ExperimentChange(
                key=exp.key,
                users=len(user_ids),
                kept=same,
                switched=int(both.sum()) - same,
                left=int(np.sum(inside_before & ~inside_after)),
                entered=int(np.sum(~inside_before & inside_after)),
            )
        )
    return changes


def describe(change: ExperimentChange) -> str:
    """One line for an owner or a log: the shares of sampled users who switch, leave and enter."""

    def share(n: int) -> str:
        return f"{n} ({n / change.users:.2%})" if change.users else str(n)

    return (
        f"experiment {change.key!r}: of {change.users} sampled users, {share(change.switched)} switch variant, "
        f"{share(change.left)} leave, {share(change.entered)} enter, {share(change.kept)} keep their variant"
    )
