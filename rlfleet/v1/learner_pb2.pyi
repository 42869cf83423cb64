from rlfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PushRolloutsResponse(_message.Message):
    __slots__ = ("accepted_batches", "duplicate_batches")
    ACCEPTED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    accepted_batches: int
    duplicate_batches: int
    def __init__(self, accepted_batches: _Optional[int] = ..., duplicate_batches: _Optional[int] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("newer_than",)
    NEWER_THAN_FIELD_NUMBER: _ClassVar[int]
    newer_than: int
    def __init__(self, newer_than: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LearnerStatus(_message.Message):
    __slots__ = ("step", "policy_version", "queued_batches", "last_staleness", "state", "generator_versions")
    class GeneratorVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUEUED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    LAST_STALENESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    step: int
    policy_version: int
    queued_batches: int
    last_staleness: int
    state: str
    generator_versions: _containers.ScalarMap[str, int]
    def __init__(self, step: _Optional[int] = ..., policy_version: _Optional[int] = ..., queued_batches: _Optional[int] = ..., last_staleness: _Optional[int] = ..., state: _Optional[str] = ..., generator_versions: _Optional[_Mapping[str, int]] = ...) -> None: ...
