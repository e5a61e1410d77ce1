"""bench_retrieval: a library not installed is reported as not measured; a bad --package is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_retrieval

MISSING = "mtrank_no_such_ann_library (ef)"


def test_a_library_that_is_not_installed_is_named_in_the_report_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hnswlib and usearch come with the optional "bench" extra: such a library is stood for by a module
    # name that no installation has, beside a real faiss index
    real = bench_retrieval.candidates

    def candidates(*args: int) -> dict:
        faiss_hnsw = next(v for k, v in real(*args).items() if k.startswith("faiss HNSWFlat"))

        def build(corpus: np.ndarray) -> None:
            import mtrank_no_such_ann_library  # type: ignore[import-not-found]  # noqa: F401

        return {MISSING: (build, [100], faiss_hnsw[2]), "faiss HNSWFlat (efSearch)": faiss_hnsw}

    monkeypatch.setattr(bench_retrieval, "candidates", candidates)
    rng = np.random.default_rng(0)
    corpus = bench_retrieval.normalised(rng.standard_normal((300, 8), dtype=np.float32))
    results: dict = {"command": "test", "machine": "test"}
    bench_retrieval.ann_section("random", corpus, corpus[:5], 1, None, lambda: None, results)
    section = results["ann"]["random"]
    assert section["not_installed"] == [MISSING]
    assert "faiss HNSWFlat (efSearch)" in {row["library"] for row in section["rows"]}
    bench_retrieval.write_markdown(results, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert f"Not measured, module not installed (`pip install -e '.[bench]'`): {MISSING}." in text


def test_a_package_path_without_an_index_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_retrieval.main(["--package", str(tmp_path / "ssmtl" / "1"), "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2
    assert f"--package {tmp_path / 'ssmtl' / '1'}: no index/embeddings.npy there" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()
