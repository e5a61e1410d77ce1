"""Condition regexes mean what they mean in JavaScript: Python-only syntax is refused, the rest translated.

Each refused pattern below comes with node's verdict: JavaScript throws on it (witness None) or reads it
otherwise than Python's re (the witness text tells them apart). Where node is on PATH, the tables and
hypothesis-generated patterns are checked against a live node process.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiment_router.conditions import eval_condition
from experiment_router.errors import RegexError
from experiment_router.jsregex import compile_js, js_text
from tests.experiment_router.jsnode import JsRegex

REFUSED: list[tuple[str, str, str | None]] = [
    ("(?i)^ios", "inline flags", None),
    ("(?i:ios)", "inline flags", None),
    ("(?P<os>ios)", "named groups", None),
    ("(?P<a>x)(?P=a)", "named groups", None),
    ("ios(?#note)", "comments", None),
    ("(?>ab|a)c", "atomic groups", None),
    ("(a)?(?(1)b|c)", "conditional groups", None),
    ("a*+", "possessive", None),
    ("a++", "possessive", None),
    ("a?+", "possessive", None),
    ("a{2}+", "possessive", None),
    ("(?<=a)+b", "quantifier on a lookbehind", None),
    ("[😀-😂]", "out of order", None),
    (r"\Aios", r"\A is Python's start of text", "Aios"),
    (r"ios\Z", r"\Z is Python's end of text", "iosZ"),
    (r"\a", r"\a is Python's bell", "a"),
    (r"\U0001F600", r"\U is Python's", "U0001F600"),
    (r"\N{BULLET}", r"\N{...} is Python's", "N{BULLET}"),
    ("a{,3}", "write {0,3}", "b"),
    ("a{,}", "write {0,}", "b"),
    ("[]a]", "empty class in JavaScript", "a]"),
    (r"(a)?b\1", "backreferences", "b"),
]

# (pattern, flags, text, what JavaScript answers): cases where Python's re alone would answer otherwise
TRANSLATED: list[tuple[str, str, str, bool]] = [
    (r"^\d+$", "", "١٢٣", False),
    (r"^\w+$", "", "héllo", False),
    (r"\bé", "", "xé", True),
    (r"^\s$", "", "\x85", False),
    (r"^\s$", "", "\ufeff", True),
    ("^ios$", "", "ios\n", False),
    ("^a.b$", "", "a\rb", False),
    ("^.$", "", "😀", False),
    ("^..$", "", "😀", True),
    ("^😀+$", "", "😀\ude00", True),
    (r"[^\W]", "", "é", False),
    (r"^[a\D]$", "", "١", True),
    (r"\W", "i", "é", True),
    ("^IOS$", "i", "ios", True),
    (r"^\x41\u00e9$", "", "Aé", True),
    (r"^[\b]$", "", "\b", True),
    ("^x{}$", "", "x{}", True),
    ("^a{2}b?$", "", "aa", True),
    (r"^\0$", "", "\x00", True),
]


@pytest.mark.parametrize(("pattern", "reason", "witness"), REFUSED, ids=[p for p, _, _ in REFUSED])
def test_python_only_syntax_is_refused_with_the_reason(
    pattern: str, reason: str, witness: str | None
) -> None:
    re.compile(pattern)  # Python alone would accept it
    with pytest.raises(RegexError, match=re.escape(reason)):
        compile_js(pattern)


@pytest.mark.parametrize(
    ("pattern", "flags", "text", "js"), TRANSLATED, ids=[f"{p}/{f}:{t!r}" for p, f, t, _ in TRANSLATED]
)
def test_both_read_it_and_it_means_what_javascript_means(
    pattern: str, flags: str, text: str, js: bool
) -> None:
    assert (compile_js(pattern, flags == "i").search(js_text(text)) is not None) == js


def test_conditions_evaluate_like_the_js_sdk() -> None:
    assert eval_condition({"os": "iOS 17"}, {"os": {"$regexi": "^ios"}})
    assert not eval_condition({"os": "iOS 17"}, {"os": {"$regex": "(?i)^ios"}})  # new RegExp throws: false
    assert eval_condition({"n": 1e21}, {"n": {"$regex": r"^1e\+21$"}})  # String(1e21)


def test_refused_patterns_are_errors_or_other_meanings_in_node(js_regex: JsRegex) -> None:
    answers = js_regex.ask([(p, "", [w] if w is not None else []) for p, _, w in REFUSED])
    for (pattern, _, witness), answer in zip(REFUSED, answers, strict=True):
        if witness is None:
            assert answer == "SyntaxError", pattern
        else:
            assert answer != "SyntaxError" and answer[0] != bool(re.search(pattern, witness)), pattern


def test_translation_table_agrees_with_node(js_regex: JsRegex) -> None:
    answers = js_regex.ask([(p, f, [t]) for p, f, t, _ in TRANSLATED])
    assert [a[0] for a in answers] == [js for _, _, _, js in TRANSLATED]
    python_alone = [bool(re.search(p, t, re.I if f else 0)) for p, f, t, _ in TRANSLATED]
    assert sum(p != js for p, (_, _, _, js) in zip(python_alone, TRANSLATED, strict=True)) >= 13


TOKENS = [
    "a", "b", "é", "😀", "K", "_", " ", "-", ".", "^", "$", "|", "(", ")", "(?:", "(?=", "(?!", "(?<=a)",
    "*", "+", "?", "*?", "{2}", "{1,3}", "{", "}", "]", r"\d", r"\D", r"\w", r"\W", r"\s", r"\S", r"\b",
    r"\B", r"\.", r"\x41", r"\u00e9", r"\n", r"\0", "[ab]", "[^a]", r"[\d\s]", r"[^\W_]", r"[a-z]",
    r"[\w-]", "[😀]", "[-a]", "(?<!b)", r"\/", "\\😀", "[é-ü]", r"[\x41-\x5a]", "\\\\", "{2,}", "??", "+?",
    r"[^\d\s]", "[😀-😂]", "k", "s", "i", "ß", "ω", "å", "\u212a", "\u017f", "[^s]", "[ſ-ƀ]", r"[^\W]",
]  # fmt: skip
TEXT_CHARS = "ab aé😀\n\r١_\xa0\ufeffAK-\x00ksiIßωåΩ\u212a\u017f\u0131\u0130\u1e9e\u2126\u212b"


@settings(max_examples=150, deadline=None)
@given(
    tokens=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=8),
    flags=st.sampled_from(["", "i"]),
    texts=st.lists(st.text(alphabet=TEXT_CHARS, max_size=6), min_size=1, max_size=8),
)
def test_accepted_patterns_match_exactly_as_in_node(
    js_regex: JsRegex, tokens: list[str], flags: str, texts: list[str]
) -> None:
    pattern = "".join(tokens)
    try:
        compiled = compile_js(pattern, flags == "i")
    except RegexError:
        return  # refused: nothing to compare (a refusal must name its reason, tested above)
    (answer,) = js_regex.ask([(pattern, flags, texts)])
    assert answer != "SyntaxError", pattern
    assert [compiled.search(js_text(t)) is not None for t in texts] == answer, pattern


# Letters that Python's re.IGNORECASE folds together and JavaScript's "i" (no "u") keeps apart: Kelvin sign, long
# s, dotless i, dotted capital I, capital sharp s, Ohm sign, Angstrom sign. (pattern, text kept apart, text that
# "i" does match: the usual partner, or the letter itself where JavaScript gives it none.)
IRREGULAR_CASE = [
    ("k", "\u212a", "K"), ("s", "\u017f", "S"), ("i", "\u0131", "I"), ("i", "\u0130", "I"), ("\u00df", "\u1e9e", "\u00df"),
    ("\u03c9", "\u2126", "\u03a9"), ("\u00e5", "\u212b", "\u00c5"), ("[a-z]", "\u212a", "K"), ("[\\w]", "\u017f", "S"),
    ("[^\\W]", "\u0131", "I"),
]  # fmt: skip


@pytest.mark.parametrize(("pattern", "apart", "matched"), IRREGULAR_CASE)
def test_irregular_case_letters_under_regexi_stay_apart_as_in_javascript(
    pattern: str, apart: str, matched: str
) -> None:
    assert re.search(pattern, apart, re.IGNORECASE)  # Python's own folding would match them
    assert compile_js(pattern, True).search(js_text(apart)) is None
    assert compile_js(pattern, True).search(js_text(matched))


def test_irregular_case_letters_agree_with_node(js_regex: JsRegex) -> None:
    answers = js_regex.ask([(p, "i", [apart, matched]) for p, apart, matched in IRREGULAR_CASE])
    assert answers == [[False, True]] * len(IRREGULAR_CASE)


def _case_candidates() -> dict[int, list[int]]:
    """For every BMP code unit with a case mapping, the units either language might match it with under "i"."""
    buckets: dict[str, set[int]] = {}
    for unit in range(0x10000):
        char = chr(unit)
        keys = {char.lower()[:1], char.upper()[:1], char.casefold()[:1]} - {char}
        for key in keys:
            buckets.setdefault(key, set()).update((unit, ord(key)))
    candidates: dict[int, set[int]] = {}
    for units in buckets.values():
        for unit in units:
            candidates.setdefault(unit, set()).update(units)
    return {unit: sorted(others) for unit, others in candidates.items()}


def test_every_case_pairing_agrees_with_node(js_regex: JsRegex) -> None:
    """Each cased BMP letter, as a pattern under "i", against every letter it might fold with, in node and here."""
    candidates = _case_candidates()
    assert len(candidates) > 2000
    requests = [(re.escape(chr(unit)), "i", [chr(u) for u in others]) for unit, others in candidates.items()]
    answers = js_regex.ask(requests)
    ours = [[compile_js(p, True).search(t) is not None for t in texts] for p, _, texts in requests]
    differ = [
        (p, t)
        for (p, _, texts), a, o in zip(requests, answers, ours, strict=True)
        for t, x, y in zip(texts, a, o, strict=True)
        if x != y
    ]
    assert not differ, differ[:20]
    python_alone = sum(
        bool(re.search(p, t, re.I)) != x
        for (p, _, texts), a in zip(requests, answers, strict=True)
        for t, x in zip(texts, a, strict=True)
    )
    assert python_alone >= 7  # re.IGNORECASE alone would get the irregular letters wrong


CASE_CLASSES = [
    "[a-z]", "[^a-z]", "[A-Z]", "[^K]", "[k]", "[^k]", r"[\w]", r"[^\w]", r"[\W]", r"[^\W]", "[\u0100-\u017f]",
    "[^\u0100-\u017f]", "[\u00c0-\u00ff]", "[^\u00c0-\u00ff]", "[\u0391-\u03a9]", "[^\u0391-\u03a9]",
    "[\u2100-\u214f]", "[^\u2100-\u214f]", "[\u1e00-\u1eff]", "[sk\\d]", "[^sk\\d]", "[\u00df\u212b]",
]  # fmt: skip


def test_classes_under_regexi_agree_with_node(js_regex: JsRegex) -> None:
    letters = sorted({chr(u) for units in _case_candidates().values() for u in units if u < 0x2200})
    requests = [(pattern, "i", letters) for pattern in CASE_CLASSES]
    for (pattern, _, texts), answer in zip(requests, js_regex.ask(requests), strict=True):
        ours = [compile_js(pattern, True).fullmatch(t) is not None for t in texts]
        assert ours == answer, [(t, a) for t, a, o in zip(texts, answer, ours, strict=True) if a != o][:10]
