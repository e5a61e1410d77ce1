"""What every gRPC server and client of the platform (ranker, retrieval, outcome reporter) shares: server options,
TLS and bearer tokens.

Server options: gRPC core keeps calls that arrived but that the application has not taken yet in a pending
queue and cancels calls at random (CANCELLED, never seen by the server's code) once it holds 1,000 of them;
a burst of 2,000 calls on two busy cores got ~5% CANCELLED that way. The queue is raised to ``PENDING_CALLS``
so that bursts are queued and then answered: served, or shed by the server with RESOURCE_EXHAUSTED (the
ranker's batch queue bound), or DEADLINE_EXCEEDED. Beyond it core still cancels calls, at random from
``PENDING_CALLS`` waiting, all of them from the hard limit, and those waiting 30 s: the client gets CANCELLED
(not RESOURCE_EXHAUSTED: grpcio 1.85, limits 100/200, 799 of 1,000 calls), and no interceptor or request
counter sees them (gRPC's channelz counts them as started only). A limit of the server's own cannot take
core's place: the server takes queued calls at the pace of its event loop whatever it then does with them
(40,000 calls at once, two cores: core cancelled 11,181 with at most ~100 calls in the server at a time, and
10,028 with a limit of 16 calls in the server answering the rest RESOURCE_EXHAUSTED).

Servers take the same three options: a PEM certificate chain and key (TLS, both or neither) and a file holding
the bearer token clients must send as ``authorization: Bearer <token>``. Health checks stay open: orchestrators
probe without a token. A token without TLS is accepted with a warning: it travels in plaintext, which is only
fine behind a TLS-terminating proxy or a service mesh. Clients (the ranker calling retrieval) take a CA bundle
to verify the server with, and a token file.
"""

from __future__ import annotations

import argparse
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from grpc_serving.host_port import split_host_port

logger = logging.getLogger(__name__)

PENDING_CALLS = 8192
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.server.max_pending_requests", PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", 4 * PENDING_CALLS),
)
"""Options of every server (see the module docstring)."""

PUBLIC_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
"""Methods callable without a token (health probes)."""

UNAUTHENTICATED_MESSAGE = "missing or invalid bearer token"


class SecurityError(Exception):
    """A TLS or token file is unreadable, empty, or given without its pair; the message names the option."""


class BindError(OSError):
    """A server cannot listen on its address: the port is taken, or the host is not an address of this machine."""


def read_file(path: Path, option: str) -> bytes:
    """The bytes of ``path``.

    Raises:
        SecurityError: naming ``option`` and the file.
    """
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"{option} {path}: {exc.strerror}") from None


def read_token(path: Path, option: str = "--auth-token-file") -> str:
    """The token in ``path`` (surrounding whitespace stripped).

    Raises:
        SecurityError: the file is unreadable or holds no token.
    """
    token = read_file(path, option).decode().strip()
    if not token:
        raise SecurityError(f"{option} {path}: the file is empty")
    return token


@dataclass(frozen=True)
class ServerSecurity:
    """What a server needs: TLS credentials (None: plaintext) and the expected token (None: no auth)."""

    credentials: grpc.ServerCredentials | None = None
    token: str | None = None


def load_server_security(
    tls_cert: Path | None, tls_key: Path | None, token_file: Path | None, service: str
) -> ServerSecurity:
    """Read the files of a server's ``--tls-cert``, ``--tls-key`` and ``--auth-token-file`` options.

    Raises:
        SecurityError: a file is unreadable or empty, or only one of cert and key is given.
    """
    if (tls_cert is None) != (tls_key is None):
        raise SecurityError("--tls-cert and --tls-key must be given together")
    credentials = None
    if tls_cert is not None and tls_key is not None:
        pair = (read_file(tls_key, "--tls-key"), read_file(tls_cert, "--tls-cert"))
        credentials = grpc.ssl_server_credentials([pair])
    token = read_token(token_file) if token_file is not None else None
    if token is not None and credentials is None:
        logger.warning(
            "%s: --auth-token-file without --tls-cert/--tls-key: clients send the bearer token in plaintext; "
            "enable TLS unless a TLS-terminating proxy or a service mesh encrypts the connection",
            service,
        )
    return ServerSecurity(credentials, token)


def bind(server: grpc.Server | aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind ``address`` with TLS when ``credentials`` are given; returns the port.

    Raises:
        BindError: the address cannot be bound (grpc raises a RuntimeError that names no cause).
    """
    try:
        if credentials is not None:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError:
        raise BindError(
            f"cannot listen on {address}: the port is in use, or the host is not an address of this machine"
        ) from None


TARGET_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:", "xds:")
"""Prefixes of gRPC name-resolver targets, which a client address may use instead of HOST:PORT."""


def address_problem(address: str, least_port: int = 1) -> str | None:
    """Why ``address`` is not ``HOST:PORT`` with a port in ``least_port..65535`` (None when it is).

    gRPC takes a port above 65535 modulo 65536 (``:70000`` listened on 4464) and dials a target without a port
    on 443, so both are refused here. IPv6 hosts go in brackets (``[::]:50053``).
    """
    parsed = split_host_port(address)
    if parsed is None or parsed[1] is None or parsed[1] < least_port:
        return f"not HOST:PORT (port {least_port}..65535, an IPv6 host in brackets)"
    return None


def target_problem(target: str) -> str | None:
    """Why a client's ``target`` is neither ``HOST:PORT`` nor a gRPC name-resolver target such as
    ``dns:///HOST:PORT`` (None when it is one)."""
    return None if target.startswith(TARGET_SCHEMES) else address_problem(target)


def _authorized(handler_call_details: grpc.HandlerCallDetails, expected: bytes) -> bool:
    if handler_call_details.method in PUBLIC_METHODS:
        return True
    metadata = dict(handler_call_details.invocation_metadata or ())
    given = metadata.get("authorization", "")
    return hmac.compare_digest(given.encode() if isinstance(given, str) else given, expected)


def _expected(token: str) -> bytes:
    if not token:
        raise ValueError("the bearer token must be non-empty")
    return f"Bearer {token}".encode()


class AioBearerTokenInterceptor(aio.ServerInterceptor):
    """grpc.aio servers: rejects calls without ``authorization: Bearer <token>`` (health checks excepted)."""

    def __init__(self, token: str) -> None:
        self._expected = _expected(token)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if _authorized(handler_call_details, self._expected):
            return await continuation(handler_call_details)

        async def deny(request: Any, context: aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

        return grpc.unary_unary_rpc_method_handler(deny)  # the request is never parsed


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Thread-pool grpc servers: the same check as ``AioBearerTokenInterceptor``."""

    def __init__(self, token: str) -> None:
        self._expected = _expected(token)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if _authorized(handler_call_details, self._expected):
            return continuation(handler_call_details)

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

        return grpc.unary_unary_rpc_method_handler(deny)


@dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches a server: TLS credentials (None: plaintext) and the metadata of every call."""

    credentials: grpc.ChannelCredentials | None = None
    metadata: Sequence[tuple[str, str]] = ()


def load_client_security(ca_file: Path | None, token_file: Path | None, option_prefix: str) -> ClientSecurity:
    """Read a client's CA bundle (TLS verified against it) and token file (``<option_prefix>-tls-ca`` and
    ``<option_prefix>-token-file`` in error messages).

    Raises:
        SecurityError: a file is unreadable or empty.
    """
    credentials = None
    if ca_file is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_file(ca_file, f"{option_prefix}-tls-ca")
        )
    metadata: tuple[tuple[str, str], ...] = ()
    if token_file is not None:
        metadata = (("authorization", f"Bearer {read_token(token_file, f'{option_prefix}-token-file')}"),)
        if credentials is None:
            logger.warning(
                "%s-token-file without %s-tls-ca: the bearer token is sent in plaintext",
                option_prefix,
                option_prefix,
            )
    return ClientSecurity(credentials, metadata)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default after its help, except where it has none (required flags, options unset by
    default: ``(default: None)`` says nothing); the description and epilog keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def add_log_level_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--log-level``, as every server spells it (any case: ``debug`` or ``DEBUG``)."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default="INFO",
        help="least severe log records printed",
    )


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""Every server's log lines (each ranker ``--workers`` process puts ``w<i>`` before the level)."""


def configure_logging(level: str) -> None:
    """Log at ``--log-level`` with the servers' format; kafka-python at WARNING or above whatever the level: its
    INFO lines repeat every connection attempt (117 in a 30 s outage), which the servers report once."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def add_server_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--tls-cert``, ``--tls-key`` and ``--auth-token-file``, as every server spells them."""
    parser.add_argument(
        "--tls-cert", metavar="PEM", type=Path, help="PEM certificate chain; enables TLS with --tls-key"
    )
    parser.add_argument("--tls-key", metavar="PEM", type=Path, help="PEM private key")
    parser.add_argument(
        "--auth-token-file", metavar="FILE", type=Path, help="file holding the bearer token clients must send"
    )


def server_security_from_args(args: argparse.Namespace, service: str) -> ServerSecurity:
    """``load_server_security`` for the options ``add_server_arguments`` defined.

    Raises:
        SecurityError: see ``load_server_security``.
    """
    return load_server_security(args.tls_cert, args.tls_key, args.auth_token_file, service)
