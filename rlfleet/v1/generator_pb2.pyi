from rlfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Prompt(_message.Message):
    __slots__ = ("prompt_id", "token_ids", "text", "messages")
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    def __init__(self, prompt_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompts", "sampling", "policy_version")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    sampling: _common_pb2.SamplingParams
    policy_version: int
    def __init__(self, prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("prompt_index", "prompt_id", "prompt_ids", "prompt_text", "completions", "policy_version")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    prompt_id: str
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_text: str
    completions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Completion]
    policy_version: int
    def __init__(self, prompt_index: _Optional[int] = ..., prompt_id: _Optional[str] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., prompt_text: _Optional[str] = ..., completions: _Optional[_Iterable[_Union[_common_pb2.Completion, _Mapping]]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class LoadAdapterResponse(_message.Message):
    __slots__ = ("policy_version", "load_seconds", "loaded_versions")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    load_seconds: float
    loaded_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, policy_version: _Optional[int] = ..., load_seconds: _Optional[float] = ..., loaded_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class GetGeneratorInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GeneratorInfo(_message.Message):
    __slots__ = ("model", "base_model_id", "tokenizer", "tokenizer_hash", "max_model_len", "vocab_size", "policy_version", "loaded_versions", "max_lora_rank", "engine", "running_requests", "waiting_requests")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_HASH_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WAITING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    base_model_id: str
    tokenizer: str
    tokenizer_hash: str
    max_model_len: int
    vocab_size: int
    policy_version: int
    loaded_versions: _containers.RepeatedScalarFieldContainer[int]
    max_lora_rank: int
    engine: str
    running_requests: int
    waiting_requests: int
    def __init__(self, model: _Optional[str] = ..., base_model_id: _Optional[str] = ..., tokenizer: _Optional[str] = ..., tokenizer_hash: _Optional[str] = ..., max_model_len: _Optional[int] = ..., vocab_size: _Optional[int] = ..., policy_version: _Optional[int] = ..., loaded_versions: _Optional[_Iterable[int]] = ..., max_lora_rank: _Optional[int] = ..., engine: _Optional[str] = ..., running_requests: _Optional[int] = ..., waiting_requests: _Optional[int] = ...) -> None: ...
