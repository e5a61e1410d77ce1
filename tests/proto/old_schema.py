"""Message classes as they were before fields were added: what a client built from an older .proto sees."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from proto import common_pb2


def _edited(
    module: ModuleType, name: str, edit: Callable[[descriptor_pb2.DescriptorProto], None]
) -> type[message.Message]:
    """``module``'s message ``name`` as ``edit`` leaves its descriptor, in a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    for source in (common_pb2, module):
        file_proto = descriptor_pb2.FileDescriptorProto()
        source.DESCRIPTOR.CopyToProto(file_proto)
        if source is module:
            for message_proto in file_proto.message_type:
                if message_proto.name == name:
                    edit(message_proto)
        pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"mtrank.v1.{name}"))


def message_before(module: ModuleType, name: str, added: set[int]) -> type[message.Message]:
    """``module``'s message ``name`` without the field numbers in ``added``, in a pool of its own."""

    def drop(message_proto: descriptor_pb2.DescriptorProto) -> None:
        kept = [f for f in message_proto.field if f.number not in added]
        del message_proto.field[:]
        message_proto.field.extend(kept)

    return _edited(module, name, drop)


def message_without_presence(module: ModuleType, name: str, number: int) -> type[message.Message]:
    """``module``'s message ``name`` with its ``optional`` field ``number`` a plain proto3 scalar again (no
    presence: 0 is never sent), in a pool of its own."""

    def plain(message_proto: descriptor_pb2.DescriptorProto) -> None:
        (field,) = [f for f in message_proto.field if f.number == number]
        assert field.proto3_optional, f"{name} field {number} is not optional"
        synthetic = field.oneof_index
        field.ClearField("proto3_optional")
        field.ClearField("oneof_index")
        del message_proto.oneof_decl[synthetic]  # protoc puts synthetic oneofs last: no other index moves
        assert all(f.oneof_index < synthetic for f in message_proto.field if f.HasField("oneof_index"))

    return _edited(module, name, plain)
