"""Mongo-style targeting conditions, evaluated as GrowthBook's SDKs do (JavaScript semantics).

A condition maps attribute paths (dotted) to literal values or operator objects (`{"$in": [...]}`), plus the
logical keys `$or`, `$nor`, `$and`, `$not`. Unknown operators never match at evaluation time (the spec);
`validate_condition` rejects them up front so a typo in a config file fails loudly instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from experiment_router.errors import RegexError, UnknownOperatorError
from experiment_router.jsregex import compile_js, js_text
from experiment_router.jsvalues import js_string

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


def eval_condition(
    attributes: Mapping[str, Any], condition: Mapping[str, Any], saved_groups: SavedGroups | None = None
) -> bool:
    """Whether `attributes` satisfy `condition`.

    Args:
        attributes: the user's attributes (nested dicts allowed, addressed with dotted paths).
        condition: the targeting condition.
        saved_groups: named id lists for `$inGroup` / `$notInGroup`.
    """
    groups = saved_groups or {}
    for key, value in condition.items():
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


def validate_condition(condition: Any, keys: tuple[str | int, ...] = ()) -> None:
    """Reject malformed conditions, unknown operators and regexes JavaScript reads otherwise.

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
                validate_condition(item, (*sub, i))
        elif key == "$not":
            validate_condition(value, sub)
        elif key.startswith("$"):
            raise UnknownOperatorError(
                f"unknown logical operator {key!r}; allowed at this level: {sorted(LOGICAL_OPERATORS)}", sub
            )
        else:
            _validate_condition_value(value, sub)


def _validate_condition_value(value: Any, keys: tuple[str | int, ...]) -> None:
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
        if op in ("$not", "$size"):
            _validate_condition_value(arg, sub)
        elif op == "$elemMatch":
            if _is_operator_object(arg):
                _validate_condition_value(arg, sub)
            else:
                validate_condition(arg, sub)
        elif op in ("$all",) and isinstance(arg, list):
            for i, item in enumerate(arg):
                _validate_condition_value(item, (*sub, i))
        elif op in ("$regex", "$regexi"):
            try:
                compile_js(arg, op == "$regexi")
            except (RegexError, TypeError) as exc:
                raise UnknownOperatorError(str(exc), sub) from None


def _eval_or(attributes: Mapping[str, Any], conditions: list, groups: SavedGroups) -> bool:
    if not conditions:
        return True
    return any(eval_condition(attributes, c, groups) for c in conditions)


def _get_path(attributes: Any, path: str) -> Any:
    current = attributes
    for segment in path.split("."):
        if isinstance(current, Mapping) and segment in current:
            current = current[segment]
        else:
            return None  # the JS SDK reads a missing path as null, so `$lt: 10` matches it
    return current


def _is_operator_object(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) and k.startswith("$") for k in value)


def _eval_condition_value(condition: Any, value: Any, groups: SavedGroups) -> bool:
    if isinstance(condition, Mapping) and _is_operator_object(condition):
        return all(_eval_operator(op, value, arg, groups) for op, arg in condition.items())
    return _strict_equal(condition, value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _strict_equal(a: Any, b: Any) -> bool:
    """JSON equality as the JS SDK's JSON.stringify comparison: no bool/number mixing, 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_strict_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


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


def _to_js_number(value: Any) -> float:
    """JavaScript's Number(value) coercion used by relational comparisons of mixed types."""
    if value is None or value is False:
        return 0.0
    if value is True:
        return 1.0
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0.0
        try:
            return float(text)
        except ValueError:
            return float("nan")
    return float("nan")


def _js_compare(actual: Any, expected: Any, op: Callable[[Any, Any], bool]) -> bool:
    """Relational comparison with JS rules: two strings compare as strings, otherwise as numbers."""
    if isinstance(actual, str) and isinstance(expected, str):
        return op(actual, expected)
    a, b = _to_js_number(actual), _to_js_number(expected)
    if a != a or b != b:  # NaN never compares
        return False
    return op(a, b)


def padded_version(value: Any) -> str:
    """Version string padded so that plain string comparison orders semver-like versions."""
    if _is_number(value):
        value = js_string(value)
    if not value or not isinstance(value, str):
        value = "0"
    parts = re.split(r"[-.]", re.sub(r"(^v|\+.*$)", "", value))
    if len(parts) == 3:
        parts.append("~")
    return "-".join(p.rjust(5, " ") if re.fullmatch(r"[0-9]+", p) else p for p in parts)


def _contains(haystack: list, needle: Any) -> bool:
    return any(_strict_equal(item, needle) for item in haystack)


def _is_in(actual: Any, expected: list, fold_case: bool = False) -> bool:
    if fold_case:
        expected = [e.lower() if isinstance(e, str) else e for e in expected]
    values = actual if isinstance(actual, list) else [actual]
    for value in values:
        if fold_case and isinstance(value, str):
            value = value.lower()
        if _contains(expected, value):
            return True
    return False


def _eval_all(actual: Any, expected: Any, groups: SavedGroups, fold_case: bool) -> bool:
    if not isinstance(actual, list) or not isinstance(expected, list):
        return False
    for cond in expected:
        if fold_case:
            wanted = cond.lower() if isinstance(cond, str) else cond
            ok = any(isinstance(a, str) and a.lower() == wanted for a in actual)
        else:
            ok = any(_eval_condition_value(cond, a, groups) for a in actual)
        if not ok:
            return False
    return True


def _elem_match(actual: Any, condition: Any, groups: SavedGroups) -> bool:
    if not isinstance(actual, list):
        return False
    if _is_operator_object(condition):
        return any(_eval_condition_value(condition, item, groups) for item in actual)
    return any(isinstance(item, Mapping) and eval_condition(item, condition, groups) for item in actual)


def _eval_operator(op: str, actual: Any, expected: Any, groups: SavedGroups) -> bool:
    match op:
        case "$eq":
            return _strict_equal(actual, expected)
        case "$ne":
            return not _strict_equal(actual, expected)
        case "$lt":
            return _js_compare(actual, expected, lambda a, b: a < b)
        case "$lte":
            return _js_compare(actual, expected, lambda a, b: a <= b)
        case "$gt":
            return _js_compare(actual, expected, lambda a, b: a > b)
        case "$gte":
            return _js_compare(actual, expected, lambda a, b: a >= b)
        case "$veq":
            return padded_version(actual) == padded_version(expected)
        case "$vne":
            return padded_version(actual) != padded_version(expected)
        case "$vlt":
            return padded_version(actual) < padded_version(expected)
        case "$vlte":
            return padded_version(actual) <= padded_version(expected)
        case "$vgt":
            return padded_version(actual) > padded_version(expected)
        case "$vgte":
            return padded_version(actual) >= padded_version(expected)
        case "$exists":
            return (actual is not None) if expected else (actual is None)
        case "$in" | "$ini":
            return isinstance(expected, list) and _is_in(actual, expected, op == "$ini")
        case "$nin" | "$nini":
            return isinstance(expected, list) and not _is_in(actual, expected, op == "$nini")
        case "$inGroup":
            return _is_in(actual, list(groups.get(expected, ()) if isinstance(expected, str) else ()))
        case "$notInGroup":
            return not _is_in(actual, list(groups.get(expected, ()) if isinstance(expected, str) else ()))
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
    a string never equals a number or a boolean, and an array attribute matches `$in` if any element does.
    """
    checks = [_compile_field(key, value) for key, value in condition.items()]
    if any(c is None for c in checks) or not checks:
        return lambda attributes, groups: eval_condition(attributes, condition, groups)
    compiled: list[Callable[[Mapping[str, Any]], bool]] = checks  # type: ignore[assignment]
    if len(compiled) == 1:
        only = compiled[0]
        return lambda attributes, groups: only(attributes)
    return lambda attributes, groups: all(check(attributes) for check in compiled)


def _compile_field(path: str, value: Any) -> Callable[[Mapping[str, Any]], bool] | None:
    if path.startswith("$"):
        return None
    if isinstance(value, str):
        op, strings = "$eq", [value]
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
        if lists_match and isinstance(actual, list):
            return any(type(x) is str and x in wanted for x in actual)
        return False

    if op in ("$nin", "$ne"):
        return lambda attributes: not matches(attributes)
    return matches
