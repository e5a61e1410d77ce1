from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("experiment_key", "variant_key", "variation_id", "stage", "layer")
    EXPERIMENT_KEY_FIELD_NUMBER: _ClassVar[int]
    VARIANT_KEY_FIELD_NUMBER: _ClassVar[int]
    VARIATION_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    experiment_key: str
    variant_key: str
    variation_id: int
    stage: str
    layer: str
    def __init__(self, experiment_key: _Optional[str] = ..., variant_key: _Optional[str] = ..., variation_id: _Optional[int] = ..., stage: _Optional[str] = ..., layer: _Optional[str] = ...) -> None: ...

class InterleavingArm(_message.Message):
    __slots__ = ("key", "model")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    key: str
    model: ModelRef
    def __init__(self, key: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...
