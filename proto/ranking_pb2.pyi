from proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "attributes", "user_sparse", "user_dense", "candidate_ids", "candidate_sparse", "candidate_dense", "top_k", "retrieve_k", "model")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    USER_SPARSE_FIELD_NUMBER: _ClassVar[int]
    USER_DENSE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SPARSE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_DENSE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RETRIEVE_K_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    attributes: _containers.ScalarMap[str, str]
    user_sparse: _containers.RepeatedScalarFieldContainer[int]
    user_dense: _containers.RepeatedScalarFieldContainer[float]
    candidate_ids: _containers.RepeatedScalarFieldContainer[int]
    candidate_sparse: _containers.RepeatedScalarFieldContainer[int]
    candidate_dense: _containers.RepeatedScalarFieldContainer[float]
    top_k: int
    retrieve_k: int
    model: _common_pb2.ModelRef
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., user_sparse: _Optional[_Iterable[int]] = ..., user_dense: _Optional[_Iterable[float]] = ..., candidate_ids: _Optional[_Iterable[int]] = ..., candidate_sparse: _Optional[_Iterable[int]] = ..., candidate_dense: _Optional[_Iterable[float]] = ..., top_k: _Optional[int] = ..., retrieve_k: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class TaskScores(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, scores: _Optional[_Iterable[float]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("request_id", "candidate_ids", "task_names", "task_scores", "merged_scores", "assignments", "model", "retrieval_model", "teams", "arms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    TASK_NAMES_FIELD_NUMBER: _ClassVar[int]
    TASK_SCORES_FIELD_NUMBER: _ClassVar[int]
    MERGED_SCORES_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_MODEL_FIELD_NUMBER: _ClassVar[int]
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    candidate_ids: _containers.RepeatedScalarFieldContainer[int]
    task_names: _containers.RepeatedScalarFieldContainer[str]
    task_scores: _containers.RepeatedCompositeFieldContainer[TaskScores]
    merged_scores: _containers.RepeatedScalarFieldContainer[float]
    assignments: _containers.RepeatedCompositeFieldContainer[_common_pb2.Assignment]
    model: _common_pb2.ModelRef
    retrieval_model: _common_pb2.ModelRef
    teams: _containers.RepeatedScalarFieldContainer[int]
    arms: _containers.RepeatedCompositeFieldContainer[_common_pb2.InterleavingArm]
    def __init__(self, request_id: _Optional[str] = ..., candidate_ids: _Optional[_Iterable[int]] = ..., task_names: _Optional[_Iterable[str]] = ..., task_scores: _Optional[_Iterable[_Union[TaskScores, _Mapping]]] = ..., merged_scores: _Optional[_Iterable[float]] = ..., assignments: _Optional[_Iterable[_Union[_common_pb2.Assignment, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., retrieval_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., teams: _Optional[_Iterable[int]] = ..., arms: _Optional[_Iterable[_Union[_common_pb2.InterleavingArm, _Mapping]]] = ...) -> None: ...
