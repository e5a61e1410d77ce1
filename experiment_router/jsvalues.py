"""JavaScript's view of attribute values, as GrowthBook's JS SDK sees them: truthiness, `String(value)`,
`Number(value)`, relational comparison, strict and SameValueZero equality, and `JSON.stringify` equality.

The SDK takes a hash attribute only when it is truthy (`0`, `-0`, `NaN`, `false`, `""` and `null` mean "no
value": the user is not enrolled) and hashes `seed + value`, a string concatenation that prints numbers with
ECMAScript's Number::toString: the shortest digits that read back as the same double, in decimal notation
for 1e-7 <= |x| < 1e21 and in exponent notation ("1e+21", "1.5e-7") otherwise. Python's `str()` differs on
all of these (`2**61 + 1`, `1e-07`, `1e+21`, `True`), so every hash and condition goes through here.

Conditions compare with JavaScript's operators too: `"5" * 1 === 5`, `[3] > 2`, `"0x10" > 15` and
`"\U0001f600" < "\uffff"` (strings order by UTF-16 code units) all hold there and not in Python.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any

_EXACT_INT = 2**53  # integers below this print the same in Python and JavaScript


def js_number_string(value: float) -> str:
    """`String(x)` of a JavaScript number; an int is first rounded to the nearest double, as JS parses it."""
    if type(value) is int and -_EXACT_INT < value < _EXACT_INT:
        return str(value)
    try:
        x = float(value)
    except OverflowError:  # an int beyond the double range is +-Infinity once JSON.parse reads it
        return "Infinity" if value > 0 else "-Infinity"
    if math.isnan(x):
        return "NaN"
    if x == 0:
        return "0"  # -0 too
    if x < 0:
        return "-" + js_number_string(-x)
    if math.isinf(x):
        return "Infinity"
    digits, point = _shortest_digits(x)
    k = len(digits)
    if k <= point <= 21:
        return digits + "0" * (point - k)
    if 0 < point <= 21:
        return digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return "0." + "0" * -point + digits
    exponent = point - 1
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"


def _shortest_digits(x: float) -> tuple[str, int]:
    """(d1..dk, n) with x = 0.d1..dk * 10**n and k minimal, read off `repr` (shortest round-trip digits).

    Like JavaScript, `repr` picks the digits closest to x when several shortest strings read back as x.
    """
    mantissa, _, exponent = repr(x).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + int(exponent or 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0"), point


def js_truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value: false for null, false, 0, -0, NaN and ""; true for [] and {}."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, Real):
        return not (value == 0 or value != value)
    if isinstance(value, str):
        return value != ""
    return True  # arrays and objects, even empty ones


def js_string(value: Any) -> str:
    """`String(value)` of a JSON value: "null", "true", JS number text, arrays joined by "," (null as ""),
    "[object Object]" for objects. Values JSON cannot carry fall back to Python's str()."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Real):  # a Python int prints exactly below 2**53; numpy's numbers as doubles
        return js_number_string(value if isinstance(value, int) else float(value))
    if isinstance(value, list | tuple):
        return ",".join("" if item is None else js_string(item) for item in value)
    if isinstance(value, Mapping):
        return "[object Object]"
    return str(value)


# ECMAScript's WhiteSpace and LineTerminator code points: what Number(" 5 ") strips (not Python's str.strip set).
_JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_DECIMAL = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_RADIX = {"0x": 16, "0o": 8, "0b": 2}
_RADIX_DIGITS = {16: re.compile("[0-9a-fA-F]+"), 8: re.compile("[0-7]+"), 2: re.compile("[01]+")}


def js_number(value: Any) -> float:
    """`Number(value)` of a JSON value: null 0, booleans 0/1, strings by StringToNumber (surrounding JS white
    space ignored, "" 0, "0x1f", "0o17", "0b101", "Infinity"; "inf", "1_000" and non-ASCII digits NaN), arrays and
    objects through their string form (`[5]` is 5, `[]` 0, `{}` NaN)."""
    if value is None or value is False:
        return 0.0
    if value is True:
        return 1.0
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # beyond the double range
            return math.inf if value > 0 else -math.inf
    if isinstance(value, Real):
        return float(value)
    if not isinstance(value, str):
        value = js_string(value)
    text = value.strip(_JS_SPACE)
    if not text:
        return 0.0
    radix = _RADIX.get(text[:2].lower())
    if radix is not None:  # int() would also take signs, "_" and non-ASCII digits; JavaScript does not
        digits = text[2:]
        if not _RADIX_DIGITS[radix].fullmatch(digits):
            return math.nan
        try:
            return float(int(digits, radix))
        except OverflowError:  # beyond the double range: JavaScript reads Infinity
            return math.inf
    if _DECIMAL.fullmatch(text) is None:
        return math.nan
    return float(text)


def _utf16(text: str) -> bytes:
    """The string as big-endian UTF-16 code units: bytes order as JavaScript orders strings."""
    return text.encode("utf-16-be", "surrogatepass")


def _primitive(value: Any) -> Any:
    """ToPrimitive of a JSON value: arrays and objects become their string form."""
    return js_string(value) if isinstance(value, list | tuple | Mapping) else value


def js_compare(a: Any, b: Any, op: Callable[[Any, Any], bool]) -> bool:
    """`a < b` (or <=, >, >= as `op`) in JavaScript: two strings by UTF-16 code units, else as numbers
    (`null` 0, "0x10" 16, arrays by their string form); NaN on either side is false."""
    a, b = _primitive(a), _primitive(b)
    if isinstance(a, str) and isinstance(b, str):
        return js_string_compare(a, b, op)
    x, y = js_number(a), js_number(b)
    if x != x or y != y:
        return False
    return op(x, y)


def js_string_compare(a: str, b: str, op: Callable[[Any, Any], bool]) -> bool:
    """`op` over two strings in JavaScript's order (UTF-16 code units, not code points)."""
    return op(_utf16(a), _utf16(b))


def _same_primitive(a: Any, b: Any, nan_equal: bool) -> bool:
    if isinstance(a, list | tuple | Mapping) or isinstance(b, list | tuple | Mapping):
        return a is b  # objects compare by reference: a parsed condition never holds the attribute itself
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, Real) and isinstance(b, Real):
        x, y = js_number(a), js_number(b)
        return x == y or (nan_equal and x != x and y != y)
    if isinstance(a, Real) or isinstance(b, Real):
        return False
    return type(a) is type(b) and a == b


def js_strict_equal(a: Any, b: Any) -> bool:
    """`a === b` in JavaScript (NaN differs from itself, -0 equals 0, arrays and objects by reference)."""
    return _same_primitive(a, b, nan_equal=False)


def js_same_value_zero(a: Any, b: Any) -> bool:
    """SameValueZero, the equality of `Array.prototype.includes`: `===` except that NaN equals NaN."""
    return _same_primitive(a, b, nan_equal=True)


def array_index(key: str) -> int | None:
    """The integer value of a canonical array-index key ("0", "17"; not "01" or "-1"), else None."""
    if key.isascii() and key.isdigit() and (key == "0" or key[0] != "0") and int(key) < 2**32 - 1:
        return int(key)
    return None


def js_json(value: Any) -> str:
    """`JSON.stringify(value)` up to string escapes: numbers as JavaScript prints them (NaN and infinities as
    null), object keys in JavaScript's order (integer-like keys ascending, then the rest as inserted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Real):
        x = js_number(value)
        return js_number_string(x) if math.isfinite(x) else "null"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(js_json(item) for item in value) + "]"
    if isinstance(value, Mapping):
        keys = [k if isinstance(k, str) else js_string(k) for k in value]
        items = dict(zip(keys, value.values(), strict=True))
        indexed = sorted((i, k) for k in keys if (i := array_index(k)) is not None)
        order = [k for _, k in indexed] + [k for k in keys if array_index(k) is None]
        return "{" + ",".join(json.dumps(k) + ":" + js_json(items[k]) for k in order) + "}"
    return json.dumps(str(value))
