from proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetrieveRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "k", "exclude_ids", "user_features", "neighbor_ids", "model", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    USER_FEATURES_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOR_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    k: int
    exclude_ids: _containers.RepeatedScalarFieldContainer[int]
    user_features: _containers.RepeatedScalarFieldContainer[float]
    neighbor_ids: _containers.RepeatedScalarFieldContainer[int]
    model: _common_pb2.ModelRef
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., k: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[int]] = ..., user_features: _Optional[_Iterable[float]] = ..., neighbor_ids: _Optional[_Iterable[int]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("request_id", "candidate_ids", "scores", "model", "assignments")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    candidate_ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model: _common_pb2.ModelRef
    assignments: _containers.RepeatedCompositeFieldContainer[_common_pb2.Assignment]
    def __init__(self, request_id: _Optional[str] = ..., candidate_ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., assignments: _Optional[_Iterable[_Union[_common_pb2.Assignment, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model", "max_k")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelRef]
    default_model: _common_pb2.ModelRef
    max_k: int
    def __init__(self, models: _Optional[_Iterable[_Union[_common_pb2.ModelRef, _Mapping]]] = ..., default_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., max_k: _Optional[int] = ...) -> None: ...
