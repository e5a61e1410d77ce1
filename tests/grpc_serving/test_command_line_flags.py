"""What the command lines share: one reading of HOST[:PORT] (gRPC addresses, Kafka bootstrap lists) and one
set of argparse types for numeric flags (a usage error naming the flag, before anything starts)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import pytest

from analytics.__main__ import build_parser as analytics_parser
from analytics.consumer.__main__ import build_parser as consumer_parser
from analytics.events.outcome_server import build_parser as outcome_server_parser
from analytics.kafka.checks import bootstrap_problem
from grpc_serving import address_problem


@pytest.mark.parametrize("entry", ["kafka:9092/x", "kafka:9092?acks=1", "user@kafka:9092", "kafka:9092#a"])
def test_bootstrap_refuses_what_the_grpc_address_check_refuses(entry: str) -> None:
    """The Kafka copy of the parser took these; kafka-python then raised ValueError for ``9092/x`` in its
    sender thread, or tried ``user@kafka`` as a host name for ever."""
    assert address_problem(entry) is not None
    assert bootstrap_problem(f"kafka:9092,{entry}") == f"{entry!r} is not host:port (port 1..65535, [IPv6])"


@pytest.mark.parametrize(
    "bootstrap",
    ["kafka", "kafka:9092", "[::1]", "[::1]:9093", "PLAINTEXT://kafka:9092", "a:1, b", "10.0.0.1"],
)
def test_bootstrap_keeps_an_optional_port(bootstrap: str) -> None:
    assert bootstrap_problem(bootstrap) is None


@pytest.mark.parametrize(("address", "least_port"), [("[::]:0", 0), ("127.0.0.1:50053", 1), ("host_1:1", 1)])
def test_address_keeps_a_required_port_from_least_port(address: str, least_port: int) -> None:
    assert address_problem(address, least_port) is None
    assert address_problem(address.rpartition(":")[0]) is not None  # no port: gRPC would dial 443


CONSUMER = (consumer_parser, ["--bootstrap", "kafka:9092"])
OUTCOME_SERVER = (outcome_server_parser, ["--bootstrap", "kafka:9092"])
DASHBOARD = (analytics_parser, ["serve", "--store", "s", "--metrics", "m.yaml"])


@pytest.mark.parametrize(
    ("command", "flag", "value", "rule"),
    [
        (CONSUMER, "--commit-interval-s", "nan", "> 0"),  # a NaN interval never committed by time
        (CONSUMER, "--session-timeout-ms", "0", ">= 1"),
        (CONSUMER, "--metrics-port", "70000", "in 0..65535"),
        (OUTCOME_SERVER, "--grace-s", "-1", ">= 0"),
        (OUTCOME_SERVER, "--metrics-port", "-1", "in 0..65535"),
        (DASHBOARD, "--port", "70000", "in 0..65535"),
        (DASHBOARD, "--threads", "0", ">= 1"),  # ValueError from the thread pool
        (DASHBOARD, "--idle-timeout", "0", "> 0"),
        (DASHBOARD, "--cache-seconds", "inf", ">= 0"),
    ],
)
def test_numeric_flags_are_usage_errors_naming_the_flag(
    command: tuple[Callable[[], argparse.ArgumentParser], list[str]],
    flag: str,
    value: str,
    rule: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each command line checked its numbers in its own way after parsing (three message styles, and none for
    the consumer's and the outcome server's --metrics-port)."""
    build, argv = command
    with pytest.raises(SystemExit) as info:
        build().parse_args([*argv, flag, value])
    assert info.value.code == 2
    assert f"argument {flag}: must be {rule}, got '{value}'" in capsys.readouterr().err


def test_metrics_port_has_one_convention_in_help() -> None:
    """0 is any free port and unset is off for the consumer and the outcome server alike."""
    for build, argv in (CONSUMER, OUTCOME_SERVER):
        parser = build()
        assert parser.parse_args(argv).metrics_port is None
        assert parser.parse_args([*argv, "--metrics-port", "0"]).metrics_port == 0
        assert "0 = any free port; unset: off" in " ".join(parser.format_help().split())


def test_the_consumer_log_level_is_case_insensitive() -> None:
    """As every server's: ``--log-level debug`` was an invalid choice here."""
    assert consumer_parser().parse_args([*CONSUMER[1], "--log-level", "debug"]).log_level == "DEBUG"


CLI_MODULES = (
    "analytics.__main__",
    "analytics.consumer.__main__",
    "analytics.events.outcome_server",
    "deploy.demo.cli",
    "experiment_router.cli",
    "grpc_serving.probe",
    "models.__main__",
    "models.retrieval",
    "ranker_server.__main__",
    "retrieval_server.__main__",
)


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """A parser and its sub-commands' parsers."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


@pytest.mark.parametrize("module", CLI_MODULES)
def test_every_flag_of_every_command_line_says_what_it_does(module: str) -> None:
    """``--help`` is the manual: the consumer's --exposures-topic and --outcomes-topic had no text at all."""
    import importlib

    parser = importlib.import_module(module).build_parser()
    missing = [
        f"{sub.prog} {'/'.join(action.option_strings)}"
        for sub in _parsers(parser)
        for action in sub._actions
        if action.option_strings and not action.help and action.help != argparse.SUPPRESS
    ]
    assert not missing, missing


@pytest.mark.parametrize("module", CLI_MODULES)
def test_no_help_says_default_none(module: str) -> None:
    """A required flag or one unset by default printed ``(default: None)``, which says nothing (``analytics
    report --help``: four of them)."""
    import importlib

    parser = importlib.import_module(module).build_parser()
    said = [sub.prog for sub in _parsers(parser) if "(default: None)" in " ".join(sub.format_help().split())]
    assert not said, said


@pytest.mark.parametrize("module", CLI_MODULES)
def test_no_help_shows_docstring_markup(module: str) -> None:
    """A docstring used as ``description`` printed its reST quotes: ``python -m models --help`` began with
    ````python -m models train|evaluate|export````."""
    import importlib

    parser = importlib.import_module(module).build_parser()
    said = [sub.prog for sub in _parsers(parser) if "``" in sub.format_help()]
    assert not said, said
