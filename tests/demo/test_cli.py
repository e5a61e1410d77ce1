"""``python -m deploy.demo`` refuses bad input before it trains anything, in one line."""

from pathlib import Path

import pytest

from deploy.demo.cli import WORKDIR_MARKER, main

pytestmark = pytest.mark.usefixtures("process_state_restored")


def test_bad_config_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    workdir = ["--workdir", str(tmp_path / "work"), "--serve", "no"]
    # a ConfigError and a MetricConfigError escaped as tracebacks
    for argv, message in ((["--experiments", str(tmp_path / "nope.yaml")], "cannot read config"),
                          (["--metrics", str(empty)], "expected a mapping at the top level")):  # fmt: skip
        assert main([*argv, *workdir]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "work").exists()


def test_counts_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--users", "0"])
    assert info.value.code == 2 and "argument --users: expected a positive integer" in capsys.readouterr().err


def test_drain_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--drain-timeout", "0"])
    assert (
        info.value.code == 2 and "argument --drain-timeout: must be > 0, got '0'" in capsys.readouterr().err
    )


def test_a_workdir_holding_other_files_is_refused_not_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each run empties its workdir; ``--workdir ~`` deleted a home directory."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    assert main(["--workdir", str(home), "--serve", "no"]) == 2
    err = capsys.readouterr().err
    assert f"--workdir {home} holds files the demo did not write" in err and "Traceback" not in err
    assert (home / "thesis.tex").read_text() == "years of work"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["--workdir", str(afile), "--serve", "no"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and afile.read_text() == "x"


def test_a_workdir_an_earlier_run_marked_is_emptied(tmp_path: Path) -> None:
    from deploy.demo.cli import _clear_workdir

    work = tmp_path / "work"
    _clear_workdir(work)  # a new folder: created and marked
    assert (work / WORKDIR_MARKER).is_file()
    (work / "summary.json").write_text("{}")
    _clear_workdir(work)  # marked: emptied for the next run
    assert sorted(p.name for p in work.iterdir()) == [WORKDIR_MARKER]
