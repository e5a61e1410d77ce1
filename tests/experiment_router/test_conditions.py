"""Condition validation and the compiled fast path (must equal the general evaluator)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiment_router.conditions import (
    VALUE_OPERATORS,
    compile_condition,
    eval_condition,
    validate_condition,
)
from experiment_router.errors import UnknownOperatorError


def test_compiled_conditions_pass_the_conformance_cases(gb_cases: dict) -> None:
    for name, condition, attributes, expected, *rest in gb_cases["evalCondition"]:
        groups = rest[0] if rest else {}
        assert compile_condition(condition)(attributes, groups) == expected, name


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from(["NL", "DE", "nl", "1", ""]),
    st.lists(st.sampled_from(["NL", "DE", 1, True]), max_size=3),
)
conditions = st.dictionaries(
    st.sampled_from(["country", "a.b"]),
    st.one_of(
        st.sampled_from(["NL", "DE"]),
        st.builds(
            lambda op, xs: {op: xs},
            st.sampled_from(["$in", "$nin"]),
            st.lists(st.sampled_from(["NL", "DE", "1"])),
        ),
        st.builds(lambda op, x: {op: x}, st.sampled_from(["$eq", "$ne"]), st.sampled_from(["NL", "1"])),
    ),
    min_size=1,
    max_size=2,
)


@settings(max_examples=300, deadline=None)
@given(condition=conditions, country=values, nested=values)
def test_compiled_equals_general_evaluator(condition: dict, country: object, nested: object) -> None:
    attributes = {"country": country, "a": {"b": nested}}
    assert compile_condition(condition)(attributes, {}) == eval_condition(attributes, condition)


WELL_TYPED = {
    **{op: {"$eq": 1} for op in ("$not", "$elemMatch", "$size")},
    **{op: "x" for op in ("$regex", "$regexi", "$inGroup", "$notInGroup")},
    **{op: [1] for op in ("$in", "$nin", "$ini", "$nini", "$all", "$alli")},
    **{op: 1 for op in ("$eq", "$ne", "$lt", "$lte", "$gt", "$gte")},
    **{op: "1.10.0" for op in ("$veq", "$vne", "$vlt", "$vlte", "$vgt", "$vgte")},
    "$exists": False,
    "$type": "string",
}


def test_every_known_operator_validates() -> None:
    assert set(WELL_TYPED) == VALUE_OPERATORS
    for op, arg in WELL_TYPED.items():
        validate_condition({"field": {op: arg}})


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"country": {"$inn": ["NL"]}}, "unknown operator '$inn'"),
        ({"$xor": []}, "unknown logical operator '$xor'"),
        ({"$or": {"a": 1}}, "expects a list"),
        ({"a": {"$in": [1], "b": 2}}, "mixes operators"),
        ({"a": {"$not": {"$gtt": 1}}}, "unknown operator '$gtt'"),
        ({"a": {"$elemMatch": {"b": {"$foo": 1}}}}, "unknown operator '$foo'"),
        ({"a": {"$regex": "("}}, "invalid regular expression"),
        # operands the SDK reads as false for every user (true for $nin, $ne, $notInGroup): was accepted
        ({"country": {"$in": "NL"}}, "expects a list, got string 'NL'"),
        ({"country": {"$nin": 5}}, "expects a list, got number 5"),
        ({"tags": {"$all": "x"}}, "expects a list, got string"),
        ({"country": {"$in": [["NL"]]}}, "a list or object in the list never matches"),
        ({"country": {"$eq": ["NL", "DE"]}}, "use $in or $nin"),
        ({"app": {"$vgte": 1.1}}, "expects a version string, got number 1.1: quote it"),
        ({"email": {"$exists": "false"}}, "expects true or false, got string 'false'"),
        ({"age": {"$type": "integer"}}, "unknown type 'integer'"),
        ({"id": {"$inGroup": ["a"]}}, "expects the name of a saved group"),
        ({"$not": {"id": {"$elemMatch": {"$in": "a"}}}}, "expects a list"),
    ],
)
def test_invalid_conditions_are_rejected(condition: dict, message: str) -> None:
    with pytest.raises(UnknownOperatorError, match=message.replace("$", r"\$").replace("(", r"\(")):
        validate_condition(condition)
