"""bench_interleaving's settings: a synthetic population too small for a candidate set is refused at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_interleaving import CANDIDATES, main


def test_a_synthetic_world_with_fewer_users_than_a_candidate_set_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the synthetic world's items are its users: 60 users cannot fill a set of 100 candidates
    with pytest.raises(SystemExit) as exit_:
        main(["--users", "60", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert f"give at least {CANDIDATES}" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
