"""Hostile-client probes against the running servers, one function per probe class.

Each probe sends what an adversarial or broken client would and checks that the answer has the right status
and leaks nothing (no traceback, no internal address, no echo of a huge field). ``Tally`` counts the status
codes per probe class, so a soak run can report what it tried.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto import common_pb2, events_pb2, outcomes_pb2, ranking_pb2, retrieval_pb2

HUGE_ID = "u" * 1_100_000
GARBAGE = (b"\xff\xff\xff\x0f", b"\x0a\x05ab", b"\x12\x02\x01", b"\x18" + b"\xff" * 11)
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
# What a server may answer under overload: served, shed, or out of time; never INTERNAL or UNKNOWN.
OVERLOAD = frozenset({OK, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass
class Tally:
    """Status codes seen per probe class, and every violation found."""

    codes: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    violations: list[str] = field(default_factory=list)

    def check(
        self, probe: str, code: grpc.StatusCode, details: str, allowed: Iterable[grpc.StatusCode]
    ) -> None:
        self.codes[probe][code.name] += 1
        allowed = set(allowed)
        if code not in allowed:
            self.violations.append(
                f"{probe}: {code.name} ({details[:200]!r}), expected {sorted(c.name for c in allowed)}"
            )
        leak = next((s for s in ("Traceback", 'File "', "127.0.0.1", "localhost") if s in details), None)
        if leak is not None or len(details) > 500:
            self.violations.append(f"{probe}: the status details leak {leak or f'{len(details)} characters'}")


async def call(stub_method, request, timeout: float = 30.0, **kwargs) -> tuple[grpc.StatusCode, str]:
    """(code, details) of one unary call; OK with empty details on success."""
    try:
        await stub_method(request, timeout=timeout, **kwargs)
    except aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return OK, ""


async def garbage(channel: aio.Channel, method: str, tally: Tally, probe: str) -> None:
    raw = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    for payload in GARBAGE:
        code, details = await call(raw, payload)
        tally.check(probe, code, details, {INVALID})


def _rank(**fields) -> ranking_pb2.RankRequest:
    return ranking_pb2.RankRequest(
        **{"user_id": "soak-1", "candidate_ids": list(range(1000, 1020)), **fields}
    )


async def ranker_malformed(channel: aio.Channel, stub, tally: Tally) -> None:
    """Garbage bytes, wrong widths, NaN/Inf features, huge ids, k out of range, 10^6 candidates."""
    await garbage(channel, "/mtrank.v1.Ranker/Rank", tally, "ranker.garbage")
    invalid = [
        _rank(user_dense=[0.5] * 97),  # wrong width
        _rank(user_sparse=[1] * 33),
        _rank(candidate_dense=[0.0] * 7),  # not a multiple of the candidates
        _rank(user_dense=[math.nan]),
        _rank(candidate_dense=[math.inf] * 20),
        _rank(user_id=HUGE_ID),
        _rank(request_id=HUGE_ID),
        _rank(attributes={"country": HUGE_ID}),
        _rank(retrieve_k=2**32 - 1),
        _rank(candidate_ids=list(range(10**6))),  # 10^6 candidates (~3 MB packed)
        _rank(candidate_ids=[1000, 1000]),
        _rank(user_id=""),
        _rank(model=common_pb2.ModelRef(name="nope", version="9")),
    ]
    for request in invalid:
        tally.check("ranker.malformed", *await call(stub.Rank, request), {INVALID})
    too_big = _rank(candidate_ids=list(range(2**40, 2**40 + 10**6)))  # ~6 MB: over gRPC's 4 MiB limit
    tally.check("ranker.malformed", *await call(stub.Rank, too_big), {grpc.StatusCode.RESOURCE_EXHAUSTED})
    tally.check("ranker.valid", *await call(stub.Rank, _rank(top_k=2**32 - 1)), {OK})


async def retrieval_malformed(channel: aio.Channel, stub, tally: Tally) -> None:
    await garbage(channel, "/mtrank.v1.Retriever/Retrieve", tally, "retrieval.garbage")
    invalid = [
        retrieval_pb2.RetrieveRequest(user_id="5", k=0),
        retrieval_pb2.RetrieveRequest(user_id="5", k=10**6),
        retrieval_pb2.RetrieveRequest(user_id=HUGE_ID, k=5),
        retrieval_pb2.RetrieveRequest(user_id=" 5 ", k=5),  # not node 5: an unknown user without features
        retrieval_pb2.RetrieveRequest(user_id="new", k=5, user_features=[math.nan] * 16),
        retrieval_pb2.RetrieveRequest(user_id="new", k=5, user_features=[1.0] * 3),
        retrieval_pb2.RetrieveRequest(user_id="new", k=5, user_features=[1.0] * 16, neighbor_ids=[10**12]),
        retrieval_pb2.RetrieveRequest(user_id="5", k=5, attributes={HUGE_ID[:2000]: "x"}),
    ]
    for request in invalid:
        tally.check("retrieval.malformed", *await call(stub.Retrieve, request), {INVALID})
    unknown = retrieval_pb2.RetrieveRequest(
        user_id="5", k=5, model=common_pb2.ModelRef(name="nope", version="1")
    )
    tally.check("retrieval.malformed", *await call(stub.Retrieve, unknown), {grpc.StatusCode.NOT_FOUND})
    valid = retrieval_pb2.RetrieveRequest(user_id="5", k=10, exclude_ids=list(range(100_000)))
    tally.check("retrieval.valid", *await call(stub.Retrieve, valid), {OK})


async def outcomes_malformed(channel: aio.Channel, stub, tally: Tally) -> None:
    await garbage(channel, "/mtrank.v1.OutcomeReporter/ReportOutcomes", tally, "outcomes.garbage")

    def report(**fields) -> outcomes_pb2.ReportOutcomesRequest:
        outcome = events_pb2.Outcome(**{"user_id": "soak-1", "metric": "click", "value": 1.0, **fields})
        return outcomes_pb2.ReportOutcomesRequest(outcomes=[outcome])

    invalid = [
        report(value=math.nan),
        report(value=math.inf),
        report(value=-math.inf),
        report(user_id=HUGE_ID),
        report(metric="m" * 300),
        report(user_id=""),
        report(schema_version=99),
    ]
    for request in invalid:
        tally.check("outcomes.malformed", *await call(stub.ReportOutcomes, request), {INVALID})
    tally.check("outcomes.valid", *await call(stub.ReportOutcomes, report(value=1e308)), {OK})


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _http(url: str, request: bytes | None = None, timeout: float = 10.0) -> int:
    """Status of a GET (``request``: raw bytes sent as is, for what urllib would refuse to send)."""
    if request is None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
    with socket.create_connection(_address(url), timeout=timeout) as sock:
        sock.sendall(request)
        head = sock.recv(64)
    return int(head.split()[1]) if head.startswith(b"HTTP/") else -1


def dashboard_malformed(url: str, tally: Tally) -> None:
    """Blocking (run it in a thread): odd paths, a garbage request line, slow clients, then the normal pages."""
    cases = [
        (b"GET /%00 HTTP/1.0\r\n\r\n", 400),
        (b"GET /" + b"a" * 8192 + b" HTTP/1.0\r\n\r\n", 414),
        (b"\x16\x03\x01\x02\x00 nonsense\r\n\r\n", 400),
        (b"GET /api/experiments/%3Cx%3E/report HTTP/1.0\r\n\r\n", 404),
    ]
    for request, expected in cases:
        status = _http(url, request)
        tally.codes["dashboard.malformed"][str(status)] += 1
        if status != expected:
            tally.violations.append(
                f"dashboard.malformed: {status} for {request[:40]!r}, expected {expected}"
            )
    slow = []
    for _ in range(20):  # half-sent requests: they must not take the server down
        sock = socket.create_connection(_address(url), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        slow.append(sock)
    for sock in slow:
        sock.close()
    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:  # a burst: served or shed with 503
        statuses = list(pool.map(lambda _: _http(url + "/api/experiments"), range(200)))
    for status in statuses:
        tally.codes["dashboard.flood"][str(status)] += 1
    if not set(statuses) <= {200, 503} or 200 not in statuses:
        tally.violations.append(
            f"dashboard.flood: statuses {sorted(set(statuses))}, expected 200 and maybe 503"
        )
    for path, expected in (("/healthz", 200), ("/api/experiments", 200)):
        status = _http(url + path)
        tally.codes["dashboard.valid"][str(status)] += 1
        if status != expected:
            tally.violations.append(f"dashboard.valid: {status} for {path}, expected {expected}")


async def flood(stub_method, request, tally: Tally, probe: str, n: int = 2000) -> None:
    """``n`` calls in flight at once."""
    results = await asyncio.gather(*(call(stub_method, request, timeout=60) for _ in range(n)))
    for code, details in results:
        tally.check(probe, code, details, OVERLOAD)
    if not any(code == OK for code, _ in results):
        tally.violations.append(f"{probe}: not one of {n} concurrent calls was served")


async def serving(channel: aio.Channel, service: str = "") -> bool:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    except aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
