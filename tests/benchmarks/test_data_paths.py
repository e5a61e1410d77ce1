"""The benchmarks that read the shared data sets: a data path that holds no data set is named in a one-line
error (exit status, no traceback), before anything is trained or written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import (
    bench_census_csrec,
    bench_grec_routing,
    bench_interleaving,
    bench_movielens_dml,
    bench_ssmtl,
    select_gkd_options,
)

CASES: dict[str, tuple[Callable[[list[str]], object], list[str]]] = {
    "census-csrec": (bench_census_csrec.main, ["--data", "{data}", "--models", "mmoe", "--seeds", "0"]),
    "grec-routing": (bench_grec_routing.main, ["--dataset", "census", "--data", "{data}", "--seeds", "0"]),
    "movielens-dml": (bench_movielens_dml.main, ["--data-root", "{data}", "--datasets", "ml-100k"]),
    "select-gkd-options": (select_gkd_options.main, ["{data}", "1", "{out}/gkd.json", "mmoe", "0"]),
    "ssmtl": (bench_ssmtl.main, ["--data-path", "{data}", "--out", "{out}/ssmtl"]),
    "interleaving": (bench_interleaving.main, ["--world", "ego", "--data", "{data}", "--workdir", "{out}"]),
}
OUTPUT = {"census-csrec": ["--output", "{out}"], "grec-routing": ["--output", "{out}"],
          "movielens-dml": ["--output", "{out}/dml"], "interleaving": ["--out", "{out}/il"]}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_path_without_the_data_set_is_named_in_a_one_line_error(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "no-data-here", tmp_path / "out"
    main, argv = CASES[name]
    with pytest.raises(SystemExit) as exit_:
        main([a.format(data=data, out=out) for a in [*argv, *OUTPUT.get(name, [])]])
    code = exit_.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err
    assert code not in (0, None)
    assert str(data) in message and "Traceback" not in message
    assert not out.exists() or not any(out.rglob("*.md"))
