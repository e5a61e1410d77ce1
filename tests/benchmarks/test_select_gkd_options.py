"""select_gkd_options' command line: the documented forms, --help, and a clear error for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.select_gkd_options import parse_args


def test_the_documented_run_and_report_commands_parse() -> None:
    names = "mmoe,gkd,gkd-drop0,gkd-zero,gkd-l2,gkd-all,dml,dml-gkd0,dml-drop0"
    args = parse_args(["/data/movielens-100k", "25", "out.json", names, "0,1,2"])
    assert (args.data, args.epochs, args.out) == (Path("/data/movielens-100k"), 25, Path("out.json"))
    assert args.names == names.split(",") and args.seeds == [0, 1, 2] and args.report is None
    assert parse_args(["--report", "out.json"]).report == Path("out.json")


def test_help_describes_the_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    assert "--report JSON" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], "give DATA EPOCHS OUT NAMES SEEDS, or --report JSON"),
        (["data", "25", "out.json", "mmoe,gdk", "0"], "unknown option(s) ['gdk']; allowed: mmoe, gkd,"),
        (["data", "25", "out.json", "mmoe", "0;1"], "seeds are comma-separated integers, not '0;1'"),
    ],
)
def test_other_command_lines_are_refused_with_what_is_allowed(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err
