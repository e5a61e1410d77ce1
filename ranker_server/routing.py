"""What the ranker needs from the experiment router (docs/contracts.md), as protocols.

The real implementation is ``experiment_router.Router`` behind ``experiment_router.reload.ConfigWatcher``;
tests may pass any object with the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

RANKING = "ranking"
RETRIEVAL = "retrieval"


class Payload(Protocol):
    model_name: str
    model_version: str
    task_weights: Mapping[str, float]


class Arm(Protocol):
    key: str
    payload: Payload


class Interleaving(Protocol):
    """Both arms of an interleaving experiment, served merged into one list by ``method``."""

    method: str
    arms: Sequence[Arm]


class Assignment(Protocol):
    experiment_key: str
    variant_key: str | None
    variation_id: int
    stage: str
    layer: str | None
    in_experiment: bool
    should_log: bool
    payload: Payload
    interleaving: Interleaving | None  # set for a user inside an interleaving experiment


class Router(Protocol):
    def assign(self, user_id: str, attributes: Mapping[str, str] | None = None) -> list[Assignment]:
        """One assignment per experiment, in a fresh list the caller may keep."""
        ...

    def model_refs(self) -> Iterable[tuple[str, str, str]]: ...

    def default_for(self, stage: str) -> Payload: ...


class RouterSource(Protocol):
    """Holds the router in force; hot reload replaces ``current`` as a whole."""

    @property
    def current(self) -> Router: ...


def ranking_refs(router: Router) -> set[tuple[str, str]]:
    """Every ranking model version the router can send traffic to, the default included."""
    refs = {(name, version) for stage, name, version in router.model_refs() if stage == RANKING}
    default = router.default_for(RANKING)
    refs.add((default.model_name, default.model_version))
    return refs
