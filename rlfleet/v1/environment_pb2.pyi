from rlfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnvStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENV_STATUS_UNSPECIFIED: _ClassVar[EnvStatus]
    ENV_STATUS_OK: _ClassVar[EnvStatus]
    ENV_STATUS_TIMEOUT: _ClassVar[EnvStatus]
    ENV_STATUS_ERROR: _ClassVar[EnvStatus]
    ENV_STATUS_INVALID_OUTPUT: _ClassVar[EnvStatus]
    ENV_STATUS_UNKNOWN_TOOL: _ClassVar[EnvStatus]
    ENV_STATUS_BAD_ARGUMENTS: _ClassVar[EnvStatus]
ENV_STATUS_UNSPECIFIED: EnvStatus
ENV_STATUS_OK: EnvStatus
ENV_STATUS_TIMEOUT: EnvStatus
ENV_STATUS_ERROR: EnvStatus
ENV_STATUS_INVALID_OUTPUT: EnvStatus
ENV_STATUS_UNKNOWN_TOOL: EnvStatus
ENV_STATUS_BAD_ARGUMENTS: EnvStatus

class Tool(_message.Message):
    __slots__ = ("name", "description", "schema_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    schema_json: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., schema_json: _Optional[str] = ...) -> None: ...

class StartSessionRequest(_message.Message):
    __slots__ = ("session_id", "environment", "columns")
    class ColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    environment: str
    columns: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., environment: _Optional[str] = ..., columns: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StartSessionResponse(_message.Message):
    __slots__ = ("status", "error", "observation", "tools", "environment")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    status: EnvStatus
    error: str
    observation: str
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    environment: str
    def __init__(self, status: _Optional[_Union[EnvStatus, str]] = ..., error: _Optional[str] = ..., observation: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., environment: _Optional[str] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("name", "arguments_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    arguments_json: str
    def __init__(self, name: _Optional[str] = ..., arguments_json: _Optional[str] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "step_index", "tool_call", "message")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step_index: int
    tool_call: ToolCall
    message: str
    def __init__(self, session_id: _Optional[str] = ..., step_index: _Optional[int] = ..., tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("status", "error", "observation", "done")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    status: EnvStatus
    error: str
    observation: str
    done: bool
    def __init__(self, status: _Optional[_Union[EnvStatus, str]] = ..., error: _Optional[str] = ..., observation: _Optional[str] = ..., done: _Optional[bool] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class FinishResponse(_message.Message):
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

class CloseRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEnvironmentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EnvironmentSpec(_message.Message):
    __slots__ = ("name", "description", "tools", "has_reward")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    HAS_REWARD_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    has_reward: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., has_reward: _Optional[bool] = ...) -> None: ...

class ListEnvironmentsResponse(_message.Message):
    __slots__ = ("environments", "script_version", "call_timeout_seconds", "session_idle_seconds", "max_sessions", "max_observation_chars")
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALL_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_OBSERVATION_CHARS_FIELD_NUMBER: _ClassVar[int]
    environments: _containers.RepeatedCompositeFieldContainer[EnvironmentSpec]
    script_version: str
    call_timeout_seconds: float
    session_idle_seconds: float
    max_sessions: int
    max_observation_chars: int
    def __init__(self, environments: _Optional[_Iterable[_Union[EnvironmentSpec, _Mapping]]] = ..., script_version: _Optional[str] = ..., call_timeout_seconds: _Optional[float] = ..., session_idle_seconds: _Optional[float] = ..., max_sessions: _Optional[int] = ..., max_observation_chars: _Optional[int] = ...) -> None: ...
