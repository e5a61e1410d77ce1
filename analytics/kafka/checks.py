"""Checks of Kafka settings that every entry point taking them runs before it connects: a bootstrap list and
topic names. kafka-python reports neither well: a port that is not a number is a ValueError in a producer's
sender thread (events then wait in the journal for good, with nothing said at start), an empty host or a port
out of range costs its whole bootstrap timeout, and an unresolved ``$(VAR)`` of a Kubernetes manifest is
tried as a host name or a topic for ever."""

from __future__ import annotations

import re

from grpc_serving.host_port import split_host_port

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's rule for topic names


def bootstrap_problem(bootstrap: str) -> str | None:
    """Why ``bootstrap`` is not a comma-separated list of ``host[:port]`` (None when it is), naming the entry.

    Without a port kafka-python uses 9092; a port 0 is refused (it costs the whole bootstrap timeout).
    """
    for entry in bootstrap.split(","):
        address = re.sub(r"^.*://", "", entry.strip())  # a SECURITY_PROTOCOL:// prefix (kafka-python's rule)
        parsed = split_host_port(address)
        if parsed is None or parsed[1] == 0:
            return f"{entry.strip()!r} is not host:port (port 1..65535, [IPv6])"
    return None


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` is no valid Kafka topic name (None when it is)."""
    if _TOPIC.fullmatch(topic) is None or topic in (".", ".."):
        return "not a Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -)"
    return None
