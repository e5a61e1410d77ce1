"""Checks of Kafka settings that every entry point taking them runs before it connects: a bootstrap list and
topic names. kafka-python reports neither well: a port that is not a number is a ValueError in a producer's
sender thread (events then wait in the journal for good, with nothing said at start), an empty host or a port
out of range costs its whole bootstrap timeout, and an unresolved ``$(VAR)`` of a Kubernetes manifest is
tried as a host name or a topic for ever."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_HOST = re.compile(r"[A-Za-z0-9_.-]+")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's rule for topic names


def bootstrap_problem(bootstrap: str) -> str | None:
    """Why ``bootstrap`` is not a comma-separated list of ``host:port`` (None when it is), naming the entry."""
    for entry in bootstrap.split(","):
        address = re.sub(r"^.*://", "", entry.strip())  # a SECURITY_PROTOCOL:// prefix (kafka-python's rule)
        try:
            parts = urlsplit(f"//{address}")
            port = parts.port  # None without one: kafka-python then uses 9092
            host = parts.hostname or ""
            valid = (
                (_HOST.fullmatch(host) is not None or ":" in host)  # a name or an IPv4 address, or IPv6
                and port != 0
                and not (port is None and address.endswith(":"))
            )
        except ValueError:  # a port that is not a number or out of range, an IPv6 address without brackets
            valid = False
        if not valid:
            return f"{entry.strip()!r} is not host:port (port 1..65535, [IPv6])"
    return None


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` is no valid Kafka topic name (None when it is)."""
    if _TOPIC.fullmatch(topic) is None or topic in (".", ".."):
        return "not a Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -)"
    return None
