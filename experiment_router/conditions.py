"""Mongo-style targeting conditions, evaluated as GrowthBook's SDKs do (JavaScript semantics).

A condition maps attribute paths (dotted) to literal values or operator objects (`{"$in": [...]}`), plus the
logical keys `$or`, `$nor`, `$and`, `$not`. Unknown operators never match at evaluation time (the spec);
`validate_condition` rejects them up front so a typo in a config file fails loudly instead.

Where the spec's cases are silent, GrowthBook's JavaScript SDK (1.8.0) is the reference, operators and all: a
literal compares loosely (`{"age": 5}` matches "5", `{"beta": true}` matches 1), `$eq` / `$in` strictly (`===`,
`includes`), `$lt` and friends with JavaScript's relational rules (jsvalues.js_compare), and paths read into
arrays (`"tags.0"`, `"tags.length"`). tests/experiment_router/test_js_sdk_rules.py replays the SDK's verdicts.
SDK 1.8.0's newer saved-group forms (`$savedGroup`, condition groups) are not supported: config saved groups
are id lists.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from experiment_router.errors import RegexError, UnknownOperatorError
from experiment_router.jsregex import compile_js, js_text
from experiment_router.jsvalues import (
    array_index,
    js_compare,
    js_json,
    js_number,
    js_same_value_zero,
    js_strict_equal,
    js_string,
    js_string_compare,
    js_truthy,
)

SavedGroups = Mapping[str, Iterable[Any]]


LOGICAL_OPERATORS = frozenset({"$or", "$nor", "$and", "$not"})
VALUE_OPERATORS = frozenset(
    {
        "$eq", "$ne", "$lt", "$lte", "$gt", "$gte",
        "$veq", "$vne", "$vlt", "$vlte", "$vgt", "$vgte",
        "$in", "$nin", "$ini", "$nini", "$all", "$alli",
        "$inGroup", "$notInGroup", "$regex", "$regexi",
        "$elemMatch", "$size", "$exists", "$type", "$not",
    }
)  # fmt: skip


def eval_condition(attributes: Any, condition: Any, saved_groups: SavedGroups | None = None) -> bool:
    """Whether `attributes` satisfy `condition`.

    Args:
        attributes: the user's attributes (nested dicts allowed, addressed with dotted paths); `$elemMatch`
            passes array elements of any type here.
        condition: the targeting condition (a mapping once validated; the JS SDK reads an array or a string
            by index and any other scalar as no clause at all).
        saved_groups: named id lists for `$inGroup` / `$notInGroup`.
    """
    groups = saved_groups or {}
    for key, value in _entries(condition):
        if key == "$or":
            if not _eval_or(attributes, value, groups):
                return False
        elif key == "$nor":
            if _eval_or(attributes, value, groups):
                return False
        elif key == "$and":
            if not all(eval_condition(attributes, c, groups) for c in value):
                return False
        elif key == "$not":
            if eval_condition(attributes, value, groups):
                return False
        elif not _eval_condition_value(value, _get_path(attributes, key), groups):
            return False
    return True


def validate_condition(
    condition: Any, keys: tuple[str | int, ...] = (), *, saved_groups: Collection[str] | None = None
) -> None:
    """Reject malformed conditions, unknown operators, operands of the wrong type and regexes JavaScript reads
    otherwise.

    Args:
        condition: the targeting condition.
        keys: where it is inside the config (for the error).
        saved_groups: the groups `$inGroup` / `$notInGroup` may name; None: any name.

    Raises:
        UnknownOperatorError: naming the operator, where it is (`keys`), and what is allowed.
    """
    if not isinstance(condition, Mapping):
        raise UnknownOperatorError(f"a condition must be a mapping, got {type(condition).__name__}", keys)
    for key, value in condition.items():
        sub = (*keys, key)
        if key in ("$or", "$nor", "$and"):
            if not isinstance(value, list):
                raise UnknownOperatorError("expects a list of conditions", sub)
            for i, item in enumerate(value):
                validate_condition(item, (*sub, i), saved_groups=saved_groups)
        elif key == "$not":
            validate_condition(value, sub, saved_groups=saved_groups)
        elif key.startswith("$"):
            raise UnknownOperatorError(
                f"unknown logical operator {key!r}; allowed at this level: {sorted(LOGICAL_OPERATORS)}", sub
            )
        else:
            _validate_condition_value(value, sub, saved_groups)


def _validate_condition_value(
    value: Any, keys: tuple[str | int, ...], saved_groups: Collection[str] | None
) -> None:
    if not isinstance(value, Mapping) or not value:
        return
    dollar = [k for k in value if isinstance(k, str) and k.startswith("$")]
    if not dollar:
        return
    if len(dollar) != len(value):
        raise UnknownOperatorError(f"mixes operators {sorted(dollar)} with plain keys", keys)
    for op, arg in value.items():
        sub = (*keys, op)
        if op not in VALUE_OPERATORS:
            raise UnknownOperatorError(f"unknown operator {op!r}; allowed: {sorted(VALUE_OPERATORS)}", sub)
        problem = _operand_problem(op, arg, saved_groups)
        if problem is not None:
            raise UnknownOperatorError(problem, sub)
        if op in ("$not", "$size"):
            _validate_condition_value(arg, sub, saved_groups)
        elif op == "$elemMatch":
            if _is_operator_object(arg):
                _validate_condition_value(arg, sub, saved_groups)
            else:
                validate_condition(arg, sub, saved_groups=saved_groups)
        elif op in ("$all",) and isinstance(arg, list):
            for i, item in enumerate(arg):
                _validate_condition_value(item, (*sub, i), saved_groups)
        elif op in ("$regex", "$regexi"):
            try:
                compile_js(arg, op == "$regexi")
            except (RegexError, TypeError) as exc:
                raise UnknownOperatorError(str(exc), sub) from None


_LIST_OPERATORS = frozenset({"$in", "$nin", "$ini", "$nini", "$all", "$alli"})
_MEMBER_OPERATORS = frozenset({"$in", "$nin", "$ini", "$nini"})
_VERSION_OPERATORS = frozenset({"$veq", "$vne", "$vlt", "$vlte", "$vgt", "$vgte"})
JS_TYPES = frozenset({"string", "number", "boolean", "array", "object", "null", "undefined"})
"""What `$type` can name: the JS SDK's getType of a JSON value (or of a missing one)."""


def _operand_problem(op: str, arg: Any, saved_groups: Collection[str] | None) -> str | None:
    """Why `arg` cannot be `op`'s operand, or None. The SDK does not fail on such an operand: the clause is
    false for every user (`$nin`, `$ne`, `$notInGroup`: true), so a slip in a config would target nobody or
    everybody without a word (`$in: NL`, `$eq: [a, b]`, `$exists: "false"`, a misspelt group or type)."""
    if op in _LIST_OPERATORS and not isinstance(arg, list):
        return f"expects a list, got {_js_type(arg)} {arg!r}"
    if op in _MEMBER_OPERATORS and any(isinstance(item, list | Mapping) for item in arg):
        return "a list or object in the list never matches (=== compares them by identity); list plain values"
    if op in ("$eq", "$ne") and isinstance(arg, list | Mapping):
        return f"{op} with a list or object never matches (=== compares them by identity); use $in or $nin"
    if op in _VERSION_OPERATORS and not isinstance(arg, str):
        return f"expects a version string, got {_js_type(arg)} {arg!r}: quote it (YAML reads 1.10 as 1.1)"
    if op == "$exists" and not isinstance(arg, bool):
        return f"expects true or false, got {_js_type(arg)} {arg!r}"
    if op == "$type" and arg not in JS_TYPES:
        return f"unknown type {arg!r}; allowed: {sorted(JS_TYPES)}"
    if op in ("$inGroup", "$notInGroup"):
        if not isinstance(arg, str):
            return f"expects the name of a saved group, got {_js_type(arg)} {arg!r}"
        if saved_groups is not None and arg not in saved_groups:
            return f"unknown saved group {arg!r}; defined in saved_groups: {sorted(saved_groups)}"
    return None


def _eval_or(attributes: Any, conditions: list, groups: SavedGroups) -> bool:
    if not conditions:
        return True
    return any(eval_condition(attributes, c, groups) for c in conditions)


def _entries(condition: Any) -> Iterable[tuple[str, Any]]:
    """`Object.entries(condition)`: a mapping's items, an array's or a string's elements by index."""
    if isinstance(condition, Mapping):
        return condition.items()
    if isinstance(condition, list | tuple | str):
        return ((str(i), item) for i, item in enumerate(condition))
    if condition is None:
        raise TypeError("a condition cannot be null")  # Object.entries(null) throws in the JS SDK too
    return ()


def _get_path(attributes: Any, path: str) -> Any:
    current = attributes
    for segment in path.split("."):
        if isinstance(current, Mapping) and segment in current:
            current = current[segment]
        elif isinstance(current, list) and segment == "length":
            current = len(current)
        elif isinstance(current, list) and (i := array_index(segment)) is not None and i < len(current):
            current = current[i]
        else:
            return None  # the JS SDK reads a missing path as null, so `$lt: 10` matches it
    return current


def _is_operator_object(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and k.startswith("$") for k in value)
    )


def _eval_condition_value(condition: Any, value: Any, groups: SavedGroups, fold_case: bool = False) -> bool:
    """The SDK's evalConditionValue: a literal compares loosely (`value + ""`, `value * 1`, `!!value`), an
    operator object applies each operator, anything else compares as JSON text."""
    if isinstance(condition, str):
        return js_string(value).lower() == condition.lower() if fold_case else js_string(value) == condition
    if isinstance(condition, bool):
        return value is not None and js_truthy(value) == condition
    if isinstance(condition, int | float):
        return js_number(value) == js_number(condition)
    if condition is None:
        return value is None
    if _is_operator_object(condition):
        return all(_eval_operator(op, value, arg, groups) for op, arg in condition.items())
    return js_json(value) == js_json(condition)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _js_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "unknown"


def padded_version(value: Any) -> str:
    """Version string padded so that plain string comparison orders semver-like versions."""
    if _is_number(value):
        value = js_string(value)
    if not value or not isinstance(value, str):
        value = "0"
    # JavaScript's `$` is the very end and its `.` stops at any line terminator; Python's differ on both.
    parts = re.split(r"[-.]", re.sub(r"(^v|\+[^\n\r\u2028\u2029]*\Z)", "", value))
    if len(parts) == 3:
        parts.append("~")
    return "-".join(p.rjust(5, " ") if re.fullmatch(r"[0-9]+", p) else p for p in parts)


def _fold(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _is_in(actual: Any, expected: list, fold_case: bool = False) -> bool:
    """The SDK's isIn: `expected.includes(actual)` (SameValueZero), any element of an array attribute;
    with `fold_case`, strings lower-cased and compared with `===`."""
    values = actual if isinstance(actual, list) else [actual]
    if fold_case:
        return any(js_strict_equal(_fold(v), _fold(e)) for v in values for e in expected)
    return any(js_same_value_zero(v, e) for v in values for e in expected)


def _group_values(groups: SavedGroups, name: Any) -> list | None:
    """The ids of a saved group: an unknown name is an empty list, an entry that is no list None (no match)."""
    entry = groups.get(name if isinstance(name, str) else js_string(name), [])
    if isinstance(entry, list):
        return entry
    if isinstance(entry, Mapping):  # the SDK's {"type": "list", "values": [...]} form
        values = entry.get("values") if entry.get("type") == "list" else None
        return values if isinstance(values, list) else None
    return None if isinstance(entry, str) else list(entry)  # a tuple or set handed in by a caller


def _eval_all(actual: Any, expected: Any, groups: SavedGroups, fold_case: bool) -> bool:
    if not isinstance(actual, list) or not isinstance(expected, list):
        return False
    return all(any(_eval_condition_value(cond, a, groups, fold_case) for a in actual) for cond in expected)


def _elem_match(actual: Any, condition: Any, groups: SavedGroups) -> bool:
    if not isinstance(actual, list):
        return False
    if condition is None:
        raise TypeError("$elemMatch needs a condition, got null")  # the JS SDK throws here too
    items = [item for item in actual if item is not None]  # the SDK skips null elements (not 0, "" or false)
    if _is_operator_object(condition):
        return any(_eval_condition_value(condition, item, groups) for item in items)
    return any(eval_condition(item, condition, groups) for item in items)


_RELATIONAL = {"$lt": operator.lt, "$lte": operator.le, "$gt": operator.gt, "$gte": operator.ge}
_VERSION = {"$vlt": operator.lt, "$vlte": operator.le, "$vgt": operator.gt, "$vgte": operator.ge}


def _eval_operator(op: str, actual: Any, expected: Any, groups: SavedGroups) -> bool:
    match op:
        case "$eq":
            return js_strict_equal(actual, expected)
        case "$ne":
            return not js_strict_equal(actual, expected)
        case "$lt" | "$lte" | "$gt" | "$gte":
            return js_compare(actual, expected, _RELATIONAL[op])
        case "$veq":
            return padded_version(actual) == padded_version(expected)
        case "$vne":
            return padded_version(actual) != padded_version(expected)
        case "$vlt" | "$vlte" | "$vgt" | "$vgte":
            return js_string_compare(padded_version(actual), padded_version(expected), _VERSION[op])
        case "$exists":
            return (actual is not None) if js_truthy(expected) else (actual is None)
        case "$in" | "$ini":
            return isinstance(expected, list) and _is_in(actual, expected, op == "$ini")
        case "$nin" | "$nini":
            return isinstance(expected, list) and not _is_in(actual, expected, op == "$nini")
        case "$inGroup" | "$notInGroup":
            values = _group_values(groups, expected)
            return values is not None and _is_in(actual, values) == (op == "$inGroup")
        case "$not":
            return not _eval_condition_value(expected, actual, groups)
        case "$size":
            return isinstance(actual, list) and _eval_condition_value(expected, len(actual), groups)
        case "$elemMatch":
            return _elem_match(actual, expected, groups)
        case "$all" | "$alli":
            return _eval_all(actual, expected, groups, op == "$alli")
        case "$regex" | "$regexi":
            try:  # the JS SDK answers false when `new RegExp` throws
                return compile_js(expected, op == "$regexi").search(js_text(js_string(actual))) is not None
            except (RegexError, TypeError):
                return False
        case "$type":
            return _js_type(actual) == expected
    return False


ConditionFn = Callable[[Mapping[str, Any], SavedGroups], bool]


def compile_condition(condition: Mapping[str, Any]) -> ConditionFn:
    """A function equivalent to `eval_condition(attrs, condition, groups)`, specialised once.

    Plain fields compared with string literals, or with `$in` / `$nin` / `$eq` / `$ne` over strings, become
    set lookups; anything else falls back to the general evaluator. The specialisation keeps the JS rules:
    a literal matches any value whose string form it is (5 for "5", ["a", "b"] for "a,b"), the operators
    only strings (`===`, `includes`), and an array attribute matches `$in` if any element does.
    """
    checks = [_compile_field(key, value) for key, value in condition.items()]
    compiled = [check for check in checks if check is not None]
    if len(compiled) < len(checks) or not compiled:
        return lambda attributes, groups: eval_condition(attributes, condition, groups)
    if len(compiled) == 1:
        only = compiled[0]
        return lambda attributes, groups: only(attributes)
    return lambda attributes, groups: all(check(attributes) for check in compiled)


def _compile_field(path: str, value: Any) -> Callable[[Mapping[str, Any]], bool] | None:
    if path.startswith("$"):
        return None
    if isinstance(value, str):
        op, strings = "literal", [value]
    elif isinstance(value, Mapping) and len(value) == 1:
        ((op, strings),) = value.items()
        if op in ("$eq", "$ne") and isinstance(strings, str):
            strings = [strings]
        if op not in ("$in", "$nin", "$eq", "$ne") or not isinstance(strings, list):
            return None
        if op in ("$eq", "$ne") and not isinstance(value[op], str):
            return None
    else:
        return None
    if not all(type(s) is str for s in strings):
        return None
    wanted = frozenset(strings)
    lists_match = op in (
        "$in",
        "$nin",
    )  # `$eq: "x"` on an array attribute compares the whole array: never equal

    def matches(attributes: Mapping[str, Any]) -> bool:
        actual = attributes.get(path) if "." not in path else _get_path(attributes, path)
        if type(actual) is str:
            return actual in wanted
        if op == "literal":  # `value + "" === literal`
            return js_string(actual) in wanted
        if lists_match and isinstance(actual, list):
            return any(type(x) is str and x in wanted for x in actual)
        return False

    if op in ("$nin", "$ne"):
        return lambda attributes: not matches(attributes)
    return matches
