"""JavaScript's view of attribute values: truthiness and `String(value)`, as GrowthBook's JS SDK sees them.

The SDK takes a hash attribute only when it is truthy (`0`, `-0`, `NaN`, `false`, `""` and `null` mean "no
value": the user is not enrolled) and hashes `seed + value`, a string concatenation that prints numbers with
ECMAScript's Number::toString: the shortest digits that read back as the same double, in decimal notation
for 1e-7 <= |x| < 1e21 and in exponent notation ("1e+21", "1.5e-7") otherwise. Python's `str()` differs on
all of these (`2**61 + 1`, `1e-07`, `1e+21`, `True`), so every hash and condition goes through here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

_EXACT_INT = 2**53  # integers below this print the same in Python and JavaScript


def js_number_string(value: Real) -> str:
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
    if isinstance(value, Real):
        return js_number_string(value)
    if isinstance(value, list | tuple):
        return ",".join("" if item is None else js_string(item) for item in value)
    if isinstance(value, Mapping):
        return "[object Object]"
    return str(value)
