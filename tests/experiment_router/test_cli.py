"""The command line on the example configs, and its error handling."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from experiment_router import Router
from experiment_router.cli import main
from tests.experiment_router.helpers import EXAMPLES, base_config

TWO_LAYERS = str(EXAMPLES / "two_layers.yaml")


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", TWO_LAYERS]) == 0
    assert "OK (2 experiments, 2 running)" in capsys.readouterr().out


def test_validate_bad_config_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TWO_LAYERS).read_text().replace("coverage: 1.0", "coverage: 3", 1))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:") and "retrieval-ssmtl" in err and "coverage" in err
    assert "Traceback" not in err


def test_validate_an_empty_file_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert main(["validate", str(empty)]) == 2
    assert capsys.readouterr().err == (
        f"error: {empty}:1: the file is empty (or holds only comments): "
        "expected a mapping with 'defaults' and 'experiments'\n"
    )


def test_validate_against_model_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", TWO_LAYERS, "--model-repository", str(tmp_path)]) == 2
    assert "is not in the model repository" in capsys.readouterr().err


def test_assign_explains_each_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["assign", "--config", TWO_LAYERS, "--user", "qa-alice", "--attr", "country=NL"]) == 0
    out = capsys.readouterr().out
    assert "forced into 'treatment' (QA allowlist)" in out and "not targeted" in out
    assert "ranking: mmoe v1 task_weights={'click': 1.0, 'rating': 0.1}" in out


def test_assign_regular_user(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["assign", "--config", TWO_LAYERS, "--user", "user-42"]) == 0
    out = capsys.readouterr().out
    assert out.count("log exposure") == 2 and "in variant" in out


def test_preview_prints_counts_and_srm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--config", str(EXAMPLES / "aa_test.yaml"), "--users", "20000"]) == 0
    out = capsys.readouterr().out
    assert "ranking-aa [ranking, running]" in out and "SRM chi-square p-value" in out
    assert "expected 50.00%" in out


def test_bad_attr_syntax_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["assign", "--config", TWO_LAYERS, "--user", "u", "--attr", "novalue"])
    assert info.value.code == 2


def test_unreadable_inputs_exit_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    assert main(["validate", str(binary)]) == 2  # was a UnicodeDecodeError traceback
    assert capsys.readouterr().err == (
        f"error: {binary}:1: cannot read config: not UTF-8 text: byte 0xff (invalid start byte) (column 1); "
        "save the file as UTF-8\n"
    )
    cases = [
        (tmp_path / "missing.json", None, "cannot read cases: No such file or directory"),
        (tmp_path, None, "cannot read cases: Is a directory"),
        (tmp_path / "bad.json", "{bad", ":1: invalid JSON"),
        (tmp_path / "list.json", "[1, 2]", "expected GrowthBook's cases.json"),
        (tmp_path / "section.json", '{"hash": 5}', "section 'hash' must be a list of cases"),
    ]
    for path, text, message in cases:
        if text is not None:
            path.write_text(text)
        assert main(["conformance", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}") and message in err and "Traceback" not in err, err
    # a missing repository made every model "not in the model repository"
    assert main(["validate", TWO_LAYERS, "--model-repository", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: --model-repository: no such folder\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["preview", "--config", TWO_LAYERS, "--users", "-5"],  # printed an empty preview
        ["assign", "--config", TWO_LAYERS, "--user", "u", "--attr", "=5"],  # an attribute named ''
        ["assign", "--config", TWO_LAYERS, "--user", "u", "--at", "nan"],  # passed every start/end check
    ],
)
def test_bad_numbers_and_attributes_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and argv[-2] in capsys.readouterr().err


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_preview_include_drafts_runs_on_every_example(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-validating the full model_dump set every default explicitly: `method` on every A/B test and
    `sticky` on interleaving ones were refused, so --include-drafts failed on any config."""
    assert main(["preview", "--config", str(example), "--users", "2000", "--include-drafts"]) == 0
    assert "not in experiment" in capsys.readouterr().out


def test_preview_include_drafts_previews_a_draft(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = base_config()
    data["experiments"][0].pop("status")  # a draft by default
    path = tmp_path / "draft.json"
    path.write_text(json.dumps(data))
    assert main(["preview", "--config", str(path), "--users", "2000"]) == 0
    assert "exp-a [ranking, draft]: 2000 not in experiment" in capsys.readouterr().out
    assert main(["preview", "--config", str(path), "--users", "2000", "--include-drafts"]) == 0
    assert "exp-a [ranking, running]: 0 not in experiment" in capsys.readouterr().out


def test_attributes_are_strings_as_servers_receive_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--attr app=5` was the number 5, which `$in: [5]` matches and the server's "5" does not."""
    data = base_config()
    data["experiments"][0]["condition"] = {"app": {"$in": [5]}}
    path = tmp_path / "typed.json"
    path.write_text(json.dumps(data))
    assert not Router.from_file(path).assign("u1", {"app": "5"})[0].in_experiment  # what a server decides
    assert main(["assign", "--config", str(path), "--user", "u1", "--attr", "app=5"]) == 0
    assert "not targeted (condition false)" in capsys.readouterr().out
    assert main(["preview", "--config", str(path), "--users", "100", "--attr", "app=5"]) == 0
    assert "exp-a [ranking, running]: 100 not in experiment" in capsys.readouterr().out


def test_preview_at_a_time_and_srm_beside_a_zero_weight_variation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = base_config()
    exp = data["experiments"][0]
    exp["start"], exp["end"] = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"
    exp["variations"].append({"key": "off", "payload": {"model_name": "mmoe", "model_version": "9"}})
    for variation, weight in zip(exp["variations"], (0.5, 0.5, 0.0), strict=True):
        variation["weight"] = weight
    path = tmp_path / "window.json"
    path.write_text(json.dumps(data))
    inside = str(datetime(2026, 1, 2, tzinfo=UTC).timestamp())
    assert main(["preview", "--config", str(path), "--users", "4000", "--at", inside]) == 0
    out = capsys.readouterr().out
    assert "exp-a [ranking, running]: 0 not in experiment" in out and "SRM chi-square p-value" in out
    assert main(["preview", "--config", str(path), "--users", "4000", "--at", "1767225599"]) == 0  # 1 s early
    assert "exp-a [ranking, running]: 4000 not in experiment" in capsys.readouterr().out


def test_preview_compare_to_counts_the_users_a_change_moves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = base_config(), base_config()
    for config, weights in ((old, (0.9, 0.1)), (new, (0.5, 0.5))):
        for variation, weight in zip(config["experiments"][0]["variations"], weights, strict=True):
            variation["weight"] = weight
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    args = ["preview", "--config", str(tmp_path / "new.json"), "--users", "10000"]
    assert main([*args, "--compare-to", str(tmp_path / "old.json")]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("  experiment 'exp-a': of 10000 sampled users, ") and "switch variant" in line
    assert 3_500 < int(line.split("sampled users, ")[1].split(" ")[0]) < 4_500  # 40 % expected


@pytest.mark.parametrize("command", ["validate", "assign", "preview", "conformance"])
def test_each_command_help_says_what_it_does(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`preview --help` showed only its usage and options: what it does was in the top-level help alone."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    summary = {
        "validate": "Check a config file",
        "assign": "Show every experiment's variant for one user",
        "preview": "Allocation counts per experiment/variant over N synthetic users",
        "conformance": "Run GrowthBook's cases.json",
    }[command]
    assert summary in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["validate"],
        ["assign", "--config", TWO_LAYERS],
        ["assign", "--config", TWO_LAYERS, "--user", "u", "--attr", "novalue"],
        ["assign", "--config", TWO_LAYERS, "--user", "u", "--at", "soon"],
        ["preview", "--config", TWO_LAYERS, "--users", "many"],
        ["preview", "--config", TWO_LAYERS, "--users", "100000000000"],  # ran until memory ran out
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """argparse printed its usage (up to six lines) before the error."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("python -m experiment_router") and ": error: " in err and "usage:" not in err


def test_conformance_without_cases_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`{}` (or any JSON object without GrowthBook's sections) reported 0 passed, 0 failed and exit 0."""
    path = tmp_path / "empty.json"
    path.write_text('{"hash": [], "unrelated": [[1]]}')
    assert main(["conformance", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: no cases in any section") and err.count("\n") == 1
