"""Shared fixtures and the conformance-case parametrization (as GrowthBook's SDK test modules do)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiment_router.conformance import REQUIRED_SECTIONS, is_excluded
from tests.experiment_router.jsnode import JsNumber, JsPrinter, JsRegex, NodeWorker, node_available

DATA = Path(__file__).parent / "data"
CASES_PATH = DATA / "growthbook_cases.json"
EXAMPLES = Path(__file__).parents[2] / "experiment_router" / "examples"


def _cases() -> dict:
    with open(CASES_PATH, encoding="utf-8") as fh:
        return json.load(fh)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`gb_case` parametrizes a test over every non-excluded case of every required section."""
    if "gb_case" in metafunc.fixturenames:
        cases = _cases()
        params = [
            pytest.param((section, case), id=f"{section}:{i}:{case[0] if isinstance(case[0], str) else ''}")
            for section in REQUIRED_SECTIONS
            for i, case in enumerate(cases[section])
            if not is_excluded(section, case)
        ]
        metafunc.parametrize("gb_case", params)


@pytest.fixture(scope="session")
def gb_cases() -> dict:
    return _cases()


def _node_worker(worker_class: type[NodeWorker]) -> Iterator[NodeWorker]:
    if not node_available():
        pytest.skip("node is not on PATH")
    worker = worker_class()
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def js_printer() -> Iterator[NodeWorker]:
    """A node process printing String(v) / Boolean(v); tests using it skip where node is not installed."""
    yield from _node_worker(JsPrinter)


@pytest.fixture(scope="session")
def js_numbers() -> Iterator[NodeWorker]:
    """A node process answering String(Number(v)); tests using it skip where node is not installed."""
    yield from _node_worker(JsNumber)


@pytest.fixture(scope="session")
def js_regex() -> Iterator[NodeWorker]:
    """A node process answering `new RegExp(p, flags).test(text)`; skips where node is not installed."""
    yield from _node_worker(JsRegex)
