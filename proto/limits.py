"""Size limits of the contract's string fields: every server checks them at its edge, the event SDK before sending.

Why: gRPC admits 4 MiB messages, but an id ends up in every Kafka record it travels in (exposures, outcomes),
and a record above the broker's ~1 MB limit can never be delivered. Limits well below that keep every event a
few kilobytes. A violation is reported with the field name and the limit, never with the value (which may be
megabytes long, or something the caller should not see echoed).
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_ID_BYTES = 512
"""user_id, request_id, event_id."""

MAX_NAME_BYTES = 256
"""Experiment and variant keys, metric names, stages, model names and versions, Open Inference tensor and
datatype names."""

MAX_ATTRIBUTES = 64
"""Targeting attributes per request."""

MAX_ATTRIBUTE_BYTES = 1024
"""One attribute key or value."""


def _too_long(value: str, max_bytes: int) -> bool:
    # len() first: UTF-8 takes at least one byte per character, so only non-ASCII text needs encoding.
    return len(value) > max_bytes or (
        not value.isascii() and len(value.encode("utf-8", "surrogatepass")) > max_bytes
    )


def oversized(fields: Mapping[str, str], max_bytes: int) -> tuple[str, str] | None:
    """``(field, reason)`` for the first of ``fields`` (name -> value) longer than ``max_bytes``, else None.

    The reason never quotes the value.
    """
    for name, value in fields.items():
        if _too_long(value, max_bytes):
            return name, f"is longer than {max_bytes} bytes (UTF-8)"
    return None


def request_problem(
    ids: Mapping[str, str],
    names: Mapping[str, str] | None = None,
    attributes: Mapping[str, str] | None = None,
) -> tuple[str, str] | None:
    """``(field, reason)`` for the first limit a request breaks, else None.

    Args:
        ids: id fields (name -> value), at most ``MAX_ID_BYTES`` each.
        names: key/name fields, at most ``MAX_NAME_BYTES`` each.
        attributes: the targeting attributes (reported as the field ``attributes``).
    """
    problem = oversized(ids, MAX_ID_BYTES) or (oversized(names, MAX_NAME_BYTES) if names else None)
    if problem is None and attributes:
        reason = attributes_problem(attributes)
        problem = None if reason is None else ("attributes", reason)
    return problem


def attributes_problem(attributes: Mapping[str, str]) -> str | None:
    """Why a targeting-attribute map is unacceptable (too many entries, a key or value too long), or None."""
    if len(attributes) > MAX_ATTRIBUTES:
        return f"has {len(attributes)} entries, at most {MAX_ATTRIBUTES} are accepted"
    for key, value in attributes.items():
        if _too_long(key, MAX_ATTRIBUTE_BYTES):
            return f"has a key longer than {MAX_ATTRIBUTE_BYTES} bytes"
        if _too_long(value, MAX_ATTRIBUTE_BYTES):
            return f"has a value longer than {MAX_ATTRIBUTE_BYTES} bytes"
    return None
