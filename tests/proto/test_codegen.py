"""The committed *_pb2 modules must be what the current .proto files generate."""

from pathlib import Path

import pytest

from proto import codegen

pytest.importorskip("grpc_tools")


def test_generated_modules_match_proto_files(tmp_path: Path) -> None:
    codegen.generate(tmp_path)
    generated = sorted((tmp_path / "proto").glob("*_pb2*.py*"))
    assert generated, "protoc produced nothing"
    stale = [
        p.name for p in generated if p.read_bytes() != (codegen.PROTO_DIR / p.name).read_bytes()
    ]
    assert not stale, f"regenerate with `python -m proto.codegen`: {stale} differ from their .proto"
    assert {p.name for p in generated} == {p.name for p in codegen.PROTO_DIR.glob("*_pb2*.py*")}


def test_packed_wire_format_for_candidate_ids() -> None:
    from proto import ranking_pb2

    one = ranking_pb2.RankRequest(candidate_ids=[7]).SerializeToString()
    many = ranking_pb2.RankRequest(candidate_ids=[7] * 500).SerializeToString()
    # Packed: one tag and one length prefix for the whole array, one byte per small id.
    assert len(many) - len(one) == 499 + 1
