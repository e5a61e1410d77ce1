r"""Regular expressions of targeting conditions, read the way GrowthBook's JavaScript SDK reads them.

The SDK builds `new RegExp(pattern)` (flag "i" for `$regexi`) without the "u" flag, so a pattern and the
attribute it tests are sequences of UTF-16 code units. A config must mean the same in every SDK, so a
pattern is accepted only if JavaScript reads it the way this module makes Python read it:

* Syntax that only Python knows, or that JavaScript reads as something else, is rejected with the
  JavaScript spelling: inline flags `(?i)` and `(?i:...)` (use `$regexi`), `(?P<name>...)`, `(?P=name)`,
  `(?#...)`, atomic groups `(?>...)`, conditionals `(?(1)...)`, possessive quantifiers `a*+`, a
  quantified lookbehind `(?<=a)+`, `{,n}` (text in JavaScript), `\A`, `\Z`, `\a`, `\U...`, `\N{...}`
  (letters in JavaScript), a class opening with `]` (`[]a]` is an empty class in JavaScript), and
  backreferences (a group that did not take part matches empty text in JavaScript, nothing in Python).
* What both read but mean differently is translated to JavaScript's meaning: `\d`, `\w` and `\b` are
  ASCII, `\s` is JavaScript's whitespace set, `.` also stops at `\r`, U+2028 and U+2029, `$` is the end of
  the text only (Python's also matches before a final newline), and a character outside the BMP is two
  code units in the pattern and in the text, so `^.$` does not match an emoji, as in JavaScript.
* Case-insensitive matching (`$regexi`) is JavaScript's, spelled out in the translation instead of left to
  `re.IGNORECASE`: without the "u" flag two code units match when their `Canonicalize` is equal, which is
  their upper case when that is one code unit and not an ASCII one for a non-ASCII unit. Python folds
  through lower case and a table of extra equivalences, so under `re.IGNORECASE` the Kelvin sign, long s,
  dotless and dotted i, capital sharp s, Ohm and Angstrom signs would match `k`, `s`, `i`, `ß`, `ω` and `å`,
  which JavaScript keeps apart. Case mappings are Python's Unicode tables (`str.upper`); a letter whose
  mapping changed in a newer Unicode version than Python's may still differ from a newer node.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable
from functools import lru_cache

from experiment_router.backtracking import backtracking_problem
from experiment_router.errors import RegexError

_WORD = "A-Za-z0-9_"
_SPACE = r"\t\n\v\f\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_CLASS_ESCAPES = {  # each the same under "i": no unit outside ASCII has an ASCII Canonicalize (see below)
    "d": "[0-9]",
    "D": "[^0-9]",
    "w": f"[{_WORD}]",
    "W": f"[^{_WORD}]",
    "s": f"[{_SPACE}]",
    "S": f"[^{_SPACE}]",
}
_ASSERTIONS = {
    "b": f"(?:(?<=[{_WORD}])(?![{_WORD}])|(?<![{_WORD}])(?=[{_WORD}]))",
    "B": f"(?:(?<=[{_WORD}])(?=[{_WORD}])|(?<![{_WORD}])(?![{_WORD}]))",
}
_ANY = r"[^\n\r\u2028\u2029]"
_CONTROL = {"f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B}
_PYTHON_ONLY_ESCAPES = {
    "A": r"\A is Python's start of text; JavaScript reads the letter A: use ^",
    "Z": r"\Z is Python's end of text; JavaScript reads the letter Z: use $",
    "a": r"\a is Python's bell character; JavaScript reads the letter a: use \x07",
    "U": r"\U is Python's 8-digit code point escape; JavaScript reads the letter U: write the character",
    "N": r"\N{...} is Python's named character; JavaScript reads the letter N: write the character",
}
_GROUP_OPENERS = ("(?:", "(?=", "(?!", "(?<=", "(?<!")
_BRACES = re.compile(r"\{(\d*)(,?)(\d*)\}")
class _Dash:
    """An unescaped "-" inside a class (a range, unless first or last)."""


_DASH = _Dash()


def _error(pattern: str, at: int, reason: str) -> RegexError:
    return RegexError(f"regular expression {pattern!r} is not JavaScript at position {at}: {reason}")


def _python_only_group(pattern: str, at: int) -> str:
    rest = pattern[at + 2 :]
    if rest.startswith(("P<", "P=", "P>")):
        return "(?P<name>...) and (?P=name) are Python's named groups: use a plain group (...)"
    if rest.startswith("#"):
        return "(?#...) comments are Python-only"
    if rest.startswith(">"):
        return "atomic groups (?>...) are Python-only"
    if rest.startswith("("):
        return "conditional groups (?(...)...) are Python-only"
    if rest[:1].isalpha() or rest.startswith("-"):
        return (
            "inline flags such as (?i) and (?i:...) are Python-only (scoped ones only in the newest "
            "JavaScript engines): use $regexi for case-insensitive matching"
        )
    return f"(?{rest[:1]} is not a group JavaScript knows"


def _units(char: str) -> list[int]:
    """UTF-16 code units of one character."""
    code = ord(char)
    if code <= 0xFFFF:
        return [code]
    code -= 0x10000
    return [0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)]


def _unit_source(unit: int) -> str:
    """Python pattern text matching exactly the code unit `unit` (in or out of a class)."""
    char = chr(unit)
    if char.isascii() and char.isalnum():
        return char
    return f"\\x{unit:02x}" if unit < 0x100 else f"\\u{unit:04x}"


@lru_cache(maxsize=1)
def _case_groups() -> tuple[tuple[int, ...], ...]:
    """The code units that JavaScript's non-unicode "i" matches with one another, in groups of two or more.

    ECMAScript's Canonicalize(ch) without "u": ch's upper case, unless that is not one code unit, or ch is not
    ASCII and its upper case is; units with the same Canonicalize match each other.
    """
    by_canon: dict[str, list[int]] = {}
    for unit in range(0x10000):
        char = chr(unit)
        upper = char.upper()
        canon = upper if len(upper) == 1 and (unit < 0x80 or not upper.isascii()) else char
        by_canon.setdefault(canon, []).append(unit)
    return tuple(tuple(units) for units in by_canon.values() if len(units) > 1)


@lru_cache(maxsize=1)
def _case_group_of() -> dict[int, tuple[int, ...]]:
    return {unit: group for group in _case_groups() for unit in group}


def _class_source(units: Iterable[int]) -> str:
    return "[" + "".join(_unit_source(u) for u in sorted(units)) + "]"


def _literal(unit: int, ignore_case: bool) -> str:
    """Python pattern text matching the code unit `unit` as JavaScript does, under "i" when `ignore_case`."""
    group = _case_group_of().get(unit) if ignore_case else None
    return _class_source(group) if group else _unit_source(unit)


def _case_partners(positive: str) -> str:
    """A class of the units outside the class `positive` (Python source) that "i" adds to it in JavaScript.

    They are the units with a case partner inside it; "" when there are none.
    """
    member = re.compile(positive).fullmatch
    partners: set[int] = set()
    for group in _case_groups():
        outside = [unit for unit in group if not member(chr(unit))]
        if len(outside) < len(group):  # some of the group is inside: the rest joins it
            partners.update(outside)
    return _class_source(partners) if partners else ""


def _escape(pattern: str, at: int, in_class: bool) -> tuple[str, list[int] | str, int]:
    """Read the escape at `at`: ("units", code units, next), ("class", letter, next) or ("assert", ...)."""
    c = pattern[at + 1]
    if c in _PYTHON_ONLY_ESCAPES:
        raise _error(pattern, at, _PYTHON_ONLY_ESCAPES[c])
    if c in _CLASS_ESCAPES:
        return "class", c, at + 2
    if c in _ASSERTIONS and not in_class:
        return "assert", c, at + 2
    if c == "b":  # backspace inside a class, in both languages
        return "units", [0x08], at + 2
    if c in "123456789" and not in_class:
        raise _error(
            pattern,
            at,
            "backreferences (and octal escapes other than \\0) are not supported: a group that did not "
            "take part matches empty text in JavaScript and nothing in Python; write \\xHH for a character",
        )
    if c in "01234567":  # octal, as both read it: \0 outside a class, any octal digit inside one
        end = at + 2
        while end < len(pattern) and end < at + 4 and pattern[end] in "01234567":
            end += 1
        return "units", [int(pattern[at + 1 : end], 8)], end
    if c == "x":
        return "units", [int(pattern[at + 2 : at + 4], 16)], at + 4
    if c == "u":
        return "units", [int(pattern[at + 2 : at + 6], 16)], at + 6
    if c in _CONTROL:
        return "units", [_CONTROL[c]], at + 2
    if c.isascii() and c.isalpha():
        raise _error(pattern, at, f"\\{c} is not an escape JavaScript and Python read alike")
    return "units", _units(c), at + 2


def _char_class(pattern: str, at: int, ignore_case: bool) -> tuple[str, int]:
    """Translate the class opening at `at`; returns (Python source, index after its closing bracket).

    Under "i" a unit matches when any unit of its case group is in the class: a class gains the case partners
    of its members, a negated class loses them.
    """
    i = at + 1
    negated = pattern.startswith("^", i)
    i += negated
    if pattern.startswith("]", i):
        raise _error(
            pattern,
            at,
            "a class opening with ] is a literal ] in Python but an empty class in JavaScript "
            "([^] matches any character there): escape it as \\]",
        )
    atoms: list[int | str | _Dash] = []  # code units, class escape letters, dashes
    while pattern[i] != "]":  # Python accepted the pattern, so the class is closed
        if pattern[i] == "\\":
            _, payload, i = _escape(pattern, i, in_class=True)
            if isinstance(payload, list):  # code units
                atoms.extend(payload)
            else:
                atoms.append(payload)
        else:
            atoms.extend([_DASH] if pattern[i] == "-" else _units(pattern[i]))
            i += 1
    parts: list[str] = []
    escapes: list[str] = []
    k = 0
    while k < len(atoms):
        atom = atoms[k]
        if isinstance(atom, str):
            escapes.append(_CLASS_ESCAPES[atom])
            k += 1
            continue
        low = 0x2D if isinstance(atom, _Dash) else atom
        high = atoms[k + 2] if k + 2 < len(atoms) and atoms[k + 1] is _DASH else None
        if high is not None and not isinstance(high, str):
            high = 0x2D if isinstance(high, _Dash) else high
            if low > high:
                raise _error(
                    pattern,
                    at,
                    "a class range is out of order once characters outside the BMP are read as two "
                    "UTF-16 code units, as JavaScript reads them",
                )
            parts.append(f"{_unit_source(low)}-{_unit_source(high)}")
            k += 3
        else:
            parts.append(_unit_source(low))
            k += 1
    body = "".join(parts)
    alternatives = ([f"[{body}]"] if parts else []) + escapes
    positive = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
    partners = _case_partners(positive) if ignore_case else ""
    if negated:
        source = "(?:(?!" + "|".join(alternatives) + ")(?s:.))" if escapes else f"[^{body}]"
        return (f"(?:(?!{partners}){source})" if partners else source), i + 1
    return (f"(?:{positive}|{partners})" if partners else positive), i + 1


def _quantifier_at(pattern: str, i: int) -> bool:
    braces = _BRACES.match(pattern, i)
    return pattern.startswith(("*", "+", "?"), i) or bool(braces and (braces.group(1) or braces.group(2)))


def _after_quantifier(pattern: str, i: int, out: list[str]) -> int:
    if pattern.startswith("?", i):  # lazy, in both
        out.append("?")
        return i + 1
    if pattern.startswith("+", i):
        raise _error(pattern, i, "possessive quantifiers (a*+, a++, a?+, a{n}+) are Python-only")
    return i


def translate(pattern: str, ignore_case: bool = False) -> str:
    """Python pattern text that matches, over code-unit text (see `js_text`), what `pattern` matches in JS
    (with the "i" flag when `ignore_case`; the result is compiled without `re.IGNORECASE`).

    Raises:
        RegexError: for Python-only syntax, naming the construct, its position and the JavaScript way.
    """
    out: list[str] = []
    groups: list[str] = []  # openers of the groups open at i
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            kind, payload, i = _escape(pattern, i, in_class=False)
            if isinstance(payload, list):  # "units"
                out.extend(_literal(u, ignore_case) for u in payload)
            else:
                table = _CLASS_ESCAPES if kind == "class" else _ASSERTIONS
                out.append(table[payload])
        elif c == "[":
            source, i = _char_class(pattern, i, ignore_case)
            out.append(source)
        elif c == "(":
            opener = next((o for o in _GROUP_OPENERS if pattern.startswith(o, i)), None)
            if opener is None and pattern.startswith("(?", i):
                raise _error(pattern, i, _python_only_group(pattern, i))
            groups.append(opener or "(")
            out.append(groups[-1])
            i += len(groups[-1])
        elif c == ")":
            if groups.pop() in ("(?<=", "(?<!") and _quantifier_at(pattern, i + 1):
                raise _error(pattern, i + 1, "a quantifier on a lookbehind is a syntax error in JavaScript")
            out.append(c)
            i += 1
        elif c in "*+?":
            out.append(c)
            i = _after_quantifier(pattern, i + 1, out)
        elif c == "{" and (braces := _BRACES.match(pattern, i)) and (braces.group(1) or braces.group(2)):
            low, _, high = braces.groups()
            if not low:
                raise _error(
                    pattern,
                    i,
                    f"{braces.group(0)} repeats in Python but is text in JavaScript: write {{0,{high}}}",
                )
            out.append(braces.group(0))
            i = _after_quantifier(pattern, braces.end(), out)
        elif c in "{}]":
            out.append("\\" + c)
            i += 1
        elif c == "$":
            out.append(r"\Z")
            i += 1
        elif c == ".":
            out.append(_ANY)
            i += 1
        elif c in "^|":
            out.append(c)
            i += 1
        else:
            out.extend(_literal(u, ignore_case) for u in _units(c))
            i += 1
    return "".join(out)


@lru_cache(maxsize=1024)
def compile_js(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile a condition's regex with JavaScript's meaning; match it against `js_text(value)`.

    Raises:
        RegexError: the pattern is not a string, Python cannot read it, JavaScript reads it otherwise, or
            its matching time can grow faster than quadratically with the text's length (see backtracking).
    """
    if not isinstance(pattern, str):
        raise RegexError(f"a regular expression must be a string, got {type(pattern).__name__}")
    try:
        re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise RegexError(f"invalid regular expression {pattern!r}: {exc}") from None
    source = translate(pattern, ignore_case)
    try:
        compiled = re.compile(source)
    except re.error as exc:  # e.g. an astral range, which JavaScript reads as surrogates
        raise RegexError(
            f"regular expression {pattern!r} is not JavaScript once characters outside the BMP are read "
            f"as two UTF-16 code units: {exc}"
        ) from None
    slow = backtracking_problem(source)
    if slow is not None:  # `re` cannot be interrupted: such a pattern would stall the request path
        raise RegexError(f"regular expression {pattern!r} is refused: {slow}")
    return compiled


def js_text(text: str) -> str:
    """`text` as JavaScript regexes see it: one character per UTF-16 code unit."""
    if text.isascii() or max(text) <= "\uffff":
        return text
    return "".join(map(chr, array("H", text.encode("utf-16-le", "surrogatepass"))))
