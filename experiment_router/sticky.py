"""Sticky bucketing storage: remembers each unit's variation per (experiment, bucket version).

A document is stored per unit identity `"<attribute>||<value>"` (GrowthBook's layout), so documents can be
moved between this router and GrowthBook SDKs. Stores must be safe to call from several threads.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Protocol, TypedDict


class StickyDoc(TypedDict):
    """One unit's sticky assignments: `{"<experiment>__<bucket version>": "<variation key>"}`."""

    attributeName: str
    attributeValue: str
    assignments: dict[str, str]


def doc_key(attribute_name: str, attribute_value: str) -> str:
    """Storage key of a unit's document."""
    return f"{attribute_name}||{attribute_value}"


def assignment_key(experiment_key: str, bucket_version: int) -> str:
    """Key of one experiment version inside a document."""
    return f"{experiment_key}__{bucket_version}"


class StickyBucketStore(Protocol):
    """Pluggable persistence of sticky documents (Redis, a database, ...)."""

    def get(self, attribute_name: str, attribute_value: str) -> StickyDoc | None:
        """Return the unit's document, or None."""
        ...

    def save(self, doc: StickyDoc) -> None:
        """Insert or replace the unit's document."""
        ...


class InMemoryStickyBucketStore:
    """Default store: a dict guarded by a lock; contents vanish with the process."""

    def __init__(self, docs: dict[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, StickyDoc] = {}
        for doc in (docs or {}).values():
            self.save(doc)

    def get(self, attribute_name: str, attribute_value: str) -> StickyDoc | None:
        """Return a copy of the unit's document, or None."""
        with self._lock:
            doc = self._docs.get(doc_key(attribute_name, attribute_value))
            return copy.deepcopy(doc) if doc is not None else None

    def save(self, doc: StickyDoc) -> None:
        """Store a copy of `doc` under its unit key."""
        with self._lock:
            self._docs[doc_key(doc["attributeName"], doc["attributeValue"])] = copy.deepcopy(doc)

    def snapshot(self) -> dict[str, StickyDoc]:
        """All documents by unit key (a deep copy, for tests and debugging)."""
        with self._lock:
            return copy.deepcopy(self._docs)
