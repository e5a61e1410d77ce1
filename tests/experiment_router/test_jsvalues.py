"""JavaScript's String() and truthiness of attribute values, checked against node itself.

The table below was checked with node v20 (`node -e 'console.log(String(1e21))'`); the committed fixture
holds node's answers for ~2,000 more numbers (tests/experiment_router/make_js_fixtures.py); where node is on
PATH, the table and hypothesis-generated values are also asked of a live node process.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiment_router.evaluation import unit_string
from experiment_router.jsvalues import js_compare, js_json, js_number, js_number_string, js_string, js_truthy
from tests.experiment_router.jsnode import JsNumber, JsPrinter, decode

FIXTURE = Path(__file__).parent / "data" / "js_number_strings.json"

NUMBER_TABLE: list[tuple[Any, str]] = [
    (0, "0"),
    (-0.0, "0"),
    (1, "1"),
    (-1.5, "-1.5"),
    (0.1, "0.1"),
    (0.1 + 0.2, "0.30000000000000004"),
    (1 / 3, "0.3333333333333333"),
    (100.0, "100"),
    (4.35, "4.35"),
    (123.456, "123.456"),
    (2**53 - 1, "9007199254740991"),
    (2**53, "9007199254740992"),
    (2**53 + 1, "9007199254740992"),
    (2273199612178534537, "2273199612178534700"),
    (-2273199612178534537, "-2273199612178534700"),
    (1e16, "10000000000000000"),
    (123e18, "123000000000000000000"),
    (1e20, "100000000000000000000"),
    (999999999999999999999.0, "1e+21"),
    (1e21, "1e+21"),
    (1.5e21, "1.5e+21"),
    (123456789012345678901234, "1.2345678901234569e+23"),
    (1.5e300, "1.5e+300"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (0.000001, "0.000001"),
    (0.000001234, "0.000001234"),
    (1e-7, "1e-7"),
    (-1e-7, "-1e-7"),
    (1.5e-7, "1.5e-7"),
    (1.2345e-10, "1.2345e-10"),
    (5e-324, "5e-324"),
    (math.inf, "Infinity"),
    (-math.inf, "-Infinity"),
    (math.nan, "NaN"),
    (10**400, "Infinity"),
    (-(10**400), "-Infinity"),
]

VALUE_TABLE: list[tuple[Any, str, bool]] = [
    (None, "null", False),
    (True, "true", True),
    (False, "false", False),
    ("", "", False),
    ("0", "0", True),
    ("false", "false", True),
    (0, "0", False),
    (-0.0, "0", False),
    (math.nan, "NaN", False),
    (7, "7", True),
    ([], "", True),
    ([None], "", True),
    ([1, None, "a", [2, 3.5e21]], "1,,a,2,3.5e+21", True),
    ({}, "[object Object]", True),
    ({"a": 1}, "[object Object]", True),
]


@pytest.mark.parametrize(("value", "expected"), NUMBER_TABLE, ids=[e for _, e in NUMBER_TABLE])
def test_numbers_print_like_javascript(value: Any, expected: str) -> None:
    assert js_number_string(value) == expected


@pytest.mark.parametrize(("value", "text", "truthy"), VALUE_TABLE, ids=[repr(v) for v, _, _ in VALUE_TABLE])
def test_values_print_and_test_like_javascript(value: Any, text: str, truthy: bool) -> None:
    assert (js_string(value), js_truthy(value)) == (text, truthy)


def test_falsy_hash_attributes_mean_no_value_and_others_print_like_javascript() -> None:
    for falsy in (None, False, 0, 0.0, -0.0, math.nan, ""):
        assert unit_string(falsy) is None, falsy
    assert unit_string(True) == "true"
    assert unit_string(2273199612178534537) == "2273199612178534700"
    assert unit_string(1e-7) == "1e-7"
    assert unit_string("0") == "0"
    assert unit_string([]) == ""  # truthy in JS: the SDK hashes String([]), the empty string


def _fixture_cases() -> Iterator[tuple[Any, str, bool]]:
    doc = json.loads(FIXTURE.read_text(encoding="utf-8"))
    for line, text, truthy in doc["cases"]:
        yield decode(line), text, truthy


def test_fixture_of_node_answers_matches() -> None:
    cases = list(_fixture_cases())
    assert len(cases) > 1900
    wrong = [(v, t, js_string(v)) for v, t, b in cases if (js_string(v), js_truthy(v)) != (t, b)]
    assert not wrong[:5]


def test_tables_agree_with_live_node(js_printer: JsPrinter) -> None:
    values = [v for v, _ in NUMBER_TABLE] + [v for v, _, _ in VALUE_TABLE]
    expected = [(e, js_truthy(v)) for v, e in NUMBER_TABLE] + [(t, b) for _, t, b in VALUE_TABLE]
    assert js_printer.ask(values) == expected


json_scalars = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.booleans()
    | st.none()
    | st.text(max_size=5)
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(json_values, min_size=1, max_size=60))
def test_string_and_truthiness_agree_with_node(js_printer: JsPrinter, values: list[Any]) -> None:
    assert [(js_string(v), js_truthy(v)) for v in values] == js_printer.ask(values)


COERCION_TABLE: list[tuple[Any, float]] = [
    (None, 0.0),
    (True, 1.0),
    ("", 0.0),
    (" 5 ", 5.0),
    ("\u00a05\u2028", 5.0),  # JavaScript's white space
    ("\ufeff3", 3.0),
    ("\x1c4", math.nan),  # white space to Python's str.strip, not to JavaScript
    ("0x10", 16.0),
    ("0B101", 5.0),
    ("0o17", 15.0),
    ("-0x10", math.nan),
    ("0x", math.nan),
    ("5.", 5.0),
    (".5", 0.5),
    ("1e400", math.inf),
    ("-Infinity", -math.inf),
    ("inf", math.nan),
    ("nan", math.nan),
    ("1_000", math.nan),  # float() takes these three
    ("\u0661\u0662", math.nan),
    ([5], 5.0),
    ([], 0.0),
    ([1, 2], math.nan),
    ({}, math.nan),
    (2**1024, math.inf),
]


@pytest.mark.parametrize(("value", "expected"), COERCION_TABLE, ids=[repr(v) for v, _ in COERCION_TABLE])
def test_number_coercion_like_javascript(value: Any, expected: float) -> None:
    got = js_number(value)
    assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_coercion_table_agrees_with_live_node(js_numbers: JsNumber) -> None:
    values = [v for v, _ in COERCION_TABLE]
    assert js_numbers.ask(values) == [js_number_string(e) for _, e in COERCION_TABLE]


number_texts = st.text(alphabet="0123456789xXoObBeE+-._ \t\n\u00a0\ufeffInfinity\u0661", max_size=8)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(number_texts, min_size=1, max_size=50))
def test_string_to_number_agrees_with_node(js_numbers: JsNumber, texts: list[str]) -> None:
    assert [js_number_string(js_number(t)) for t in texts] == js_numbers.ask(texts)


def test_strings_order_by_utf16_code_units() -> None:
    assert js_compare("\U0001f600", "\uffff", operator.lt)  # a surrogate pair sorts below U+FFFF
    assert not js_compare("\U0001f600", "\uffff", operator.gt)
    assert js_compare("10", "9", operator.lt)  # two strings: no number coercion
    assert js_compare("10", 9, operator.gt)


def test_json_text_follows_json_stringify() -> None:
    assert js_json({"b": 1, "1": 2, "a": [1.0, None, math.nan]}) == '{"1":2,"b":1,"a":[1,null,null]}'
    assert js_json(-0.0) == js_json(0) and js_json(math.inf) == js_json(None)
