from proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SchemaVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEMA_VERSION_UNSPECIFIED: _ClassVar[SchemaVersion]
    SCHEMA_VERSION_1: _ClassVar[SchemaVersion]
    SCHEMA_VERSION_2: _ClassVar[SchemaVersion]
SCHEMA_VERSION_UNSPECIFIED: SchemaVersion
SCHEMA_VERSION_1: SchemaVersion
SCHEMA_VERSION_2: SchemaVersion

class Exposure(_message.Message):
    __slots__ = ("event_id", "schema_version", "request_id", "user_id", "experiment_key", "variant_key", "variation_id", "stage", "event_time_ms", "model", "item_ids", "teams", "arms")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_KEY_FIELD_NUMBER: _ClassVar[int]
    VARIANT_KEY_FIELD_NUMBER: _ClassVar[int]
    VARIATION_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    schema_version: SchemaVersion
    request_id: str
    user_id: str
    experiment_key: str
    variant_key: str
    variation_id: int
    stage: str
    event_time_ms: int
    model: _common_pb2.ModelRef
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    teams: _containers.RepeatedScalarFieldContainer[int]
    arms: _containers.RepeatedCompositeFieldContainer[_common_pb2.InterleavingArm]
    def __init__(self, event_id: _Optional[str] = ..., schema_version: _Optional[_Union[SchemaVersion, str]] = ..., request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., experiment_key: _Optional[str] = ..., variant_key: _Optional[str] = ..., variation_id: _Optional[int] = ..., stage: _Optional[str] = ..., event_time_ms: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., item_ids: _Optional[_Iterable[int]] = ..., teams: _Optional[_Iterable[int]] = ..., arms: _Optional[_Iterable[_Union[_common_pb2.InterleavingArm, _Mapping]]] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("event_id", "schema_version", "request_id", "user_id", "experiment_key", "variant_key", "event_time_ms", "metric", "value", "item_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_KEY_FIELD_NUMBER: _ClassVar[int]
    VARIANT_KEY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    schema_version: SchemaVersion
    request_id: str
    user_id: str
    experiment_key: str
    variant_key: str
    event_time_ms: int
    metric: str
    value: float
    item_id: int
    def __init__(self, event_id: _Optional[str] = ..., schema_version: _Optional[_Union[SchemaVersion, str]] = ..., request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., experiment_key: _Optional[str] = ..., variant_key: _Optional[str] = ..., event_time_ms: _Optional[int] = ..., metric: _Optional[str] = ..., value: _Optional[float] = ..., item_id: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("exposure", "outcome")
    EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    exposure: Exposure
    outcome: Outcome
    def __init__(self, exposure: _Optional[_Union[Exposure, _Mapping]] = ..., outcome: _Optional[_Union[Outcome, _Mapping]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...
