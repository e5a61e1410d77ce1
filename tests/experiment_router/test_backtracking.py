"""Condition regexes whose matching time explodes are refused when the config loads: `re` holds the GIL and
cannot be interrupted, so `(a+)+$` against "a" * 28 + "b" stalled the ranker's event loop for 18 s."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from experiment_router import ConfigError, Router, backtracking
from experiment_router.conditions import eval_condition
from experiment_router.errors import RegexError
from experiment_router.jsregex import compile_js, translate

EXPONENTIAL = [
    "(a+)+$",
    "(a|a)*$",  # re parses it as (a(?:|))*: two empty ways per "a"
    r"(\w+\s?)+$",
    "(x+x+)+y",
    "(a*)*$",
    "(a{1,10})+$",
    "(a|b|ab)*c",
    "^(?=(a+)+$)",  # inside a lookahead
]
POLYNOMIAL = [
    ".*.*=",  # 0.9 s on 1 KiB
    r"\d+\d+x",  # 0.5 s
    "a*a*b",
    ".*foo.*bar",  # the search's own .*? in front makes three
    "foo.*bar.*baz",
    "(?=.*x).*y",
]
COUNTRIES = "^(?:" + "|".join(f"country-{i}" for i in range(200)) + ")$"
ACCEPTED = [
    "foo.*bar",
    "^.*foo.*bar",
    r"^(\d+\.)+\d+$",
    r"[\w.+-]+@([\w-]+\.)+[a-z]{2,}$",
    r"^(?:[a-z0-9]+(?:-[a-z0-9]+)*\.)+[a-z]{2,}$",
    r"\s*,\s*$",
    "(a|b)*c",
    "(a|ab)*c",
    r"^[\w\d]+$",  # one class in JavaScript, an alternation once translated
    r"[^\d\s]+\d+",  # (?!...) before a character once translated
    r"\bfoo\b",
    r"(\bfoo\b\s*)+$",
    "^(ios|android)$",
    "^Mozilla/5.0 .*Android",
    r"^\d{3}-\d{4}$",
    r"(\d{1,3}\.){3}\d{1,3}",
    "(a?)+$",
    COUNTRIES,
    "x" * 2000,
]


def _problem(pattern: str, ignore_case: bool = False) -> str | None:
    return backtracking.backtracking_problem(translate(pattern, ignore_case))


@pytest.mark.parametrize("pattern", EXPONENTIAL)
@pytest.mark.parametrize("ignore_case", [False, True])
def test_exponential_patterns_are_refused(pattern: str, ignore_case: bool) -> None:
    assert "grow exponentially" in (_problem(pattern, ignore_case) or "")
    with pytest.raises(RegexError, match="is refused: its matching time can grow exponentially"):
        compile_js(pattern, ignore_case)


@pytest.mark.parametrize("pattern", POLYNOMIAL)
def test_worse_than_quadratic_patterns_are_refused(pattern: str) -> None:
    assert "to the power 3" in (_problem(pattern) or "")


@pytest.mark.parametrize("pattern", ACCEPTED, ids=lambda p: p[:40])
@pytest.mark.parametrize("ignore_case", [False, True])
def test_usual_targeting_patterns_are_accepted(pattern: str, ignore_case: bool) -> None:
    assert _problem(pattern, ignore_case) is None
    compile_js(pattern, ignore_case)


def test_a_pattern_too_large_to_check_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    email = r"[\w.+-]+@([\w-]+\.)+[a-z]{2,}$"
    assert _problem(email) is None
    monkeypatch.setattr(backtracking, "BUDGET", 50)
    assert "too complex to check" in (_problem(email) or "")


def test_a_slow_regex_in_a_config_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        textwrap.dedent("""\
        defaults:
          retrieval: {model_name: r, model_version: "1"}
          ranking: {model_name: m, model_version: "1"}
        experiments:
          - key: exp-a
            stage: ranking
            status: running
            condition:
              user_agent: {$regex: "(a+)+$"}
            variations:
              - {key: control, payload: {model_name: m, model_version: "1"}}
              - {key: treatment, payload: {model_name: m, model_version: "2"}}
        """)
    )
    with pytest.raises(ConfigError) as info:
        Router.from_file(path)
    err = info.value
    assert (err.experiment, err.field, err.line) == ("exp-a", "experiments[0].condition.user_agent.$regex", 9)
    assert "'(a+)+$' is refused: its matching time can grow exponentially" in err.message
    assert "\n" not in err.describe()


@pytest.mark.timeout(60)
def test_an_unchecked_condition_answers_false_instead_of_backtracking() -> None:
    """Conditions that never went through a config (GrowthBook payloads) get the same protection: the
    regex is refused, which the SDK answers false, as for an invalid one. Before, this ran for minutes."""
    assert eval_condition({"ua": "a" * 32 + "b"}, {"ua": {"$regex": "(a+)+$"}}) is False
    assert eval_condition({"ua": "a" * 32}, {"ua": {"$regex": "^a+$"}}) is True
