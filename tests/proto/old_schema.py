"""Message classes as they were before fields were added: what a client built from an older .proto sees."""

from __future__ import annotations

from types import ModuleType

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from proto import common_pb2


def message_before(module: ModuleType, name: str, added: set[int]) -> type[message.Message]:
    """``module``'s message ``name`` without the field numbers in ``added``, in a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    for source in (common_pb2, module):
        file_proto = descriptor_pb2.FileDescriptorProto()
        source.DESCRIPTOR.CopyToProto(file_proto)
        if source is module:
            for message_proto in file_proto.message_type:
                if message_proto.name == name:
                    kept = [f for f in message_proto.field if f.number not in added]
                    del message_proto.field[:]
                    message_proto.field.extend(kept)
        pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"mtrank.v1.{name}"))
