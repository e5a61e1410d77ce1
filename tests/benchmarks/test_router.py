"""bench_router: the report names the experiments and users it ran with, not the defaults'."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_router import main


def test_the_report_labels_follow_the_settings(tmp_path: Path) -> None:
    out = tmp_path / "router.txt"
    main(["--experiments", "4", "--users", "10", "--bulk-users", "100", "--long-batch", "10",
          "--long-id-chars", "100", "--repeat", "1", "--output", str(out)])  # fmt: skip
    text = out.read_text()
    assert "Router.assign, 2 layers x 2 slices" in text
    assert "Router.assign, 4 full-coverage (worst)" in text
    assert "bulk == scalar on 100 users: True" in text
    assert "10 slices" not in text and "20 full-coverage" not in text


@pytest.mark.parametrize("experiments", ["0", "3"])
def test_an_odd_number_of_experiments_is_refused(
    experiments: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--experiments", experiments])
    assert exit_.value.code == 2
    assert "--experiments must be even" in capsys.readouterr().err
