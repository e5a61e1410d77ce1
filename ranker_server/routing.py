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
    # Read-only members (properties), so that frozen dataclasses such as the router's satisfy them.
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def task_weights(self) -> Mapping[str, float]: ...


class Arm(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def payload(self) -> Payload: ...


class Interleaving(Protocol):
    """Both arms of an interleaving experiment, served merged into one list by ``method``."""

    @property
    def method(self) -> str: ...
    @property
    def arms(self) -> Sequence[Arm]: ...


class Assignment(Protocol):
    @property
    def experiment_key(self) -> str: ...
    @property
    def variant_key(self) -> str | None: ...
    @property
    def variation_id(self) -> int: ...
    @property
    def stage(self) -> str: ...
    @property
    def layer(self) -> str | None: ...
    @property
    def in_experiment(self) -> bool: ...
    @property
    def should_log(self) -> bool: ...
    @property
    def payload(self) -> Payload: ...
    @property
    def interleaving(self) -> Interleaving | None:
        """Set for a user inside an interleaving experiment."""
        ...


class Router(Protocol):
    def assign(self, user_id: str, attributes: Mapping[str, str] | None = None) -> Sequence[Assignment]:
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
