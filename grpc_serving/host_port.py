"""One reading of ``HOST[:PORT]`` for every address a flag takes (gRPC listen and dial addresses, Kafka bootstrap
servers), so that they refuse the same mistakes: a port that is not a number or past 65535, an empty host, an
unresolved ``$(VAR)`` of a Kubernetes manifest, an IPv6 address without brackets, and anything after the port
(``kafka:9092/x`` was a ValueError in kafka-python's sender thread) or before the host (``user@``)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_HOST = re.compile(r"[A-Za-z0-9_.-]+")  # a name or an IPv4 address; not "$(VAR)"


def split_host_port(address: str) -> tuple[str, int | None] | None:
    """The host and port of ``address`` (port None when there is none), or None when it is not
    ``HOST[:PORT]``; an IPv6 host is in brackets and comes back without them.

    The caller decides whether a port is required and which are allowed.
    """
    parts = urlsplit(f"//{address}")
    try:
        port = parts.port
    except ValueError:  # not a number, out of range, or an IPv6 address without brackets
        return None
    host = parts.hostname or ""
    named = _HOST.fullmatch(host) is not None or ":" in host  # ":": an IPv6 address (urlsplit checked it)
    if not named or parts.netloc != address or "@" in address or address.endswith(":"):
        return None
    return host, port
