"""docs/contracts.md names proto messages, fields, services, methods and enum values in prose (it has no field
tables): every such name must exist in the descriptors of proto/*_pb2, so that renaming a field, a method or
dropping ``optional`` breaks this test until the page follows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FileDescriptor

from proto import common_pb2, events_pb2, inference_pb2, outcomes_pb2, ranking_pb2, retrieval_pb2

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
FILES: tuple[FileDescriptor, ...] = tuple(
    m.DESCRIPTOR for m in (common_pb2, events_pb2, inference_pb2, outcomes_pb2, ranking_pb2, retrieval_pb2)
)


def _messages(messages: list[Descriptor]) -> Iterator[Descriptor]:
    for message in messages:
        yield message
        yield from _messages(list(message.nested_types))


MESSAGES = {m.name: m for f in FILES for m in _messages(list(f.message_types_by_name.values()))}
SERVICES = {s.full_name: s for f in FILES for s in f.services_by_name.values()}
ENUM_VALUES = {v.name for f in FILES for e in f.enum_types_by_name.values() for v in e.values}
PACKAGES = {f.package for f in FILES}

_METHOD = re.compile(r"^((?:[a-z]\w*\.)*)([A-Z]\w*)/([A-Z]\w*)$")  # [package.]Service/Method
_FIELD = re.compile(r"^([A-Z]\w*)\.([a-z_]\w*)(?:\[\w+\])?$")  # Message.field, Message.field[i]
_FIELD_SET = re.compile(r"^([A-Z]\w*) \{([a-z_][\w, ]*)\}$")  # Message {field, field}
_OPTIONAL = re.compile(r"`([A-Z]\w*)\.([a-z_]\w*)` is `optional`(?:[^.`]*?\bfield (\d+))?")


def _service(package: str, name: str) -> str | None:
    """The full name of the service ``name`` (in ``package`` when the doc gives one)."""
    found = [full for full, s in SERVICES.items() if s.name == name and full.startswith(package)]
    return found[0] if len(found) == 1 else None


def doc_proto_errors(text: str) -> list[str]:
    """Names in ``text``'s code spans that look like proto references and do not match the descriptors."""
    errors = []
    for span in re.findall(r"`([^`\n]+)`", text):
        if match := _METHOD.match(span):
            full = _service(match.group(1), match.group(2))
            if full is None or match.group(3) not in SERVICES[full].methods_by_name:
                errors.append(f"`{span}`: no such service method")
        elif (match := _FIELD.match(span)) and match.group(1) in MESSAGES:
            if match.group(2) not in MESSAGES[match.group(1)].fields_by_name:
                errors.append(f"`{span}`: {match.group(1)} has no field {match.group(2)}")
        elif (match := _FIELD_SET.match(span)) and match.group(1) in MESSAGES:
            named = {name.strip() for name in match.group(2).split(",")}
            if named != set(MESSAGES[match.group(1)].fields_by_name):
                errors.append(f"`{span}`: its fields are {sorted(MESSAGES[match.group(1)].fields_by_name)}")
        elif re.fullmatch(r"[A-Z][A-Z0-9]*_VERSION_\d+", span) and span not in ENUM_VALUES:
            errors.append(f"`{span}`: no such enum value")
        elif span.rpartition(".")[0] in PACKAGES or span.partition("/")[0].rpartition(".")[0] in PACKAGES:
            name = span.partition("/")[0]  # a health service name may add /<path>
            if name not in SERVICES and name.rpartition(".")[2] not in MESSAGES:
                errors.append(f"`{span}`: no such service or message")
    for message, field, number in _OPTIONAL.findall(text):
        descriptor = MESSAGES[message].fields_by_name.get(field) if message in MESSAGES else None
        if descriptor is None or not descriptor.has_presence:
            errors.append(f"`{message}.{field}` is documented as optional but has no explicit presence")
        elif number and int(number) != descriptor.number:
            errors.append(f"`{message}.{field}` is documented as field {number}, is {descriptor.number}")
    return errors


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        ("`RankRequest.model`, `RankResponse.teams[i]`, `mtrank.v1.Ranker`, `Router.from_file`", []),
        ("`RankRequest.pinned`", ["`RankRequest.pinned`: RankRequest has no field pinned"]),
        ("`Retriever/Rank`", ["`Retriever/Rank`: no such service method"]),
        ("`mtrank.v1.Ranker/Rank` and `inference.GRPCInferenceService/ModelInfer`", []),
        ("`InterleavingArm {key}`", ["`InterleavingArm {key}`: its fields are ['key', 'model']"]),
        ("`SCHEMA_VERSION_3`", ["`SCHEMA_VERSION_3`: no such enum value"]),
        ("`inference.GRPCInferenceService`", []),
        ("`mtrank.v1.Ranking`", ["`mtrank.v1.Ranking`: no such service or message"]),
        ("`mtrank.v1.Ranker/retrieval`", []),
        ("`mtrank.v1.Rank/retrieval`", ["`mtrank.v1.Rank/retrieval`: no such service or message"]),
        ("`Outcome.item_id` is `optional` (same field 10)", []),
        (
            "`Outcome.item_id` is `optional` (same field 9)",
            ["`Outcome.item_id` is documented as field 9, is 10"],
        ),
        (
            "`Outcome.metric` is `optional`",
            ["`Outcome.metric` is documented as optional but has no explicit presence"],
        ),
    ],
)
def test_doc_proto_errors(text: str, errors: list[str]) -> None:
    assert doc_proto_errors(text) == errors


def test_contracts_doc_names_real_proto_elements() -> None:
    text = DOC.read_text()
    assert "`RankResponse.teams[i]`" in text and "`Outcome.item_id` is `optional`" in text  # the spans parse
    assert not doc_proto_errors(text)
