from rlfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RewardItem(_message.Message):
    __slots__ = ("prompt", "completion", "reference", "columns", "completion_tokens", "finish_reason")
    class ColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    completion: str
    reference: str
    columns: _containers.ScalarMap[str, str]
    completion_tokens: int
    finish_reason: _common_pb2.FinishReason
    def __init__(self, prompt: _Optional[str] = ..., completion: _Optional[str] = ..., reference: _Optional[str] = ..., columns: _Optional[_Mapping[str, str]] = ..., completion_tokens: _Optional[int] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("request_id", "items")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: _containers.RepeatedCompositeFieldContainer[RewardItem]
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RewardItem, _Mapping]]] = ...) -> None: ...

class RewardResult(_message.Message):
    __slots__ = ("reward", "components", "status", "error")
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REWARD_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reward: float
    components: _containers.ScalarMap[str, float]
    status: _common_pb2.RewardStatus
    error: str
    def __init__(self, reward: _Optional[float] = ..., components: _Optional[_Mapping[str, float]] = ..., status: _Optional[_Union[_common_pb2.RewardStatus, str]] = ..., error: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("results", "script_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RewardResult]
    script_version: str
    def __init__(self, results: _Optional[_Iterable[_Union[RewardResult, _Mapping]]] = ..., script_version: _Optional[str] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("request_id", "prompts", "completions", "completion_tokens", "finish_reasons", "columns")
    class ColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASONS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompts: _containers.RepeatedScalarFieldContainer[str]
    completions: _containers.RepeatedScalarFieldContainer[str]
    completion_tokens: _containers.RepeatedScalarFieldContainer[int]
    finish_reasons: _containers.RepeatedScalarFieldContainer[_common_pb2.FinishReason]
    columns: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., prompts: _Optional[_Iterable[str]] = ..., completions: _Optional[_Iterable[str]] = ..., completion_tokens: _Optional[_Iterable[int]] = ..., finish_reasons: _Optional[_Iterable[_Union[_common_pb2.FinishReason, str]]] = ..., columns: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("rewards", "statuses", "components", "errors", "script_version")
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedScalarFieldContainer[float]
    statuses: _containers.RepeatedScalarFieldContainer[_common_pb2.RewardStatus]
    components: _containers.RepeatedCompositeFieldContainer[ComponentColumn]
    errors: _containers.ScalarMap[int, str]
    script_version: str
    def __init__(self, rewards: _Optional[_Iterable[float]] = ..., statuses: _Optional[_Iterable[_Union[_common_pb2.RewardStatus, str]]] = ..., components: _Optional[_Iterable[_Union[ComponentColumn, _Mapping]]] = ..., errors: _Optional[_Mapping[int, str]] = ..., script_version: _Optional[str] = ...) -> None: ...

class ComponentColumn(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ListRewardsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RewardSpec(_message.Message):
    __slots__ = ("name", "weight", "kind", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    kind: str
    description: str
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., kind: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ListRewardsResponse(_message.Message):
    __slots__ = ("rewards", "script_version")
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedCompositeFieldContainer[RewardSpec]
    script_version: str
    def __init__(self, rewards: _Optional[_Iterable[_Union[RewardSpec, _Mapping]]] = ..., script_version: _Optional[str] = ...) -> None: ...
