"""Domain types of the EnvironmentService shared by the environment server and its clients: statuses, tools, steps.

One vocabulary with rewards (rlfleet.outcomes): EnvStatus's first four values are RewardStatus's
(same names, same values, same wire numbers, same meaning), and Finish answers a plain ItemScore
(None: no reward from the environment) that `outcomes.combine` accepts beside the reward services'
scores. The two extra values are the model's mistakes in a tool call: the
session survives them, and the model sees what was wrong.

Whether a session goes on is `StepResult.done`, not the status: a tool that raised is ERROR with
done False (the model sees the error, as in TRL); a crashed or hung environment is ERROR/TIMEOUT
with done True.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rlfleet.errors import InvalidRequest
from rlfleet.v1 import environment_pb2


class EnvStatus(StrEnum):
    """Outcome of one StartSession or Step (proto EnvStatus documents each)."""

    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"
    INVALID_OUTPUT = "invalid_output"
    UNKNOWN_TOOL = "unknown_tool"
    BAD_ARGUMENTS = "bad_arguments"


_STATUS_TO_PB = {status: environment_pb2.EnvStatus.Value(f"ENV_STATUS_{status.name}") for status in EnvStatus}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


def env_status_from_proto(value: int, where: str = "status") -> EnvStatus:
    """The wire value as an EnvStatus; unspecified or unknown values raise InvalidRequest naming `where`."""
    if value not in _STATUS_FROM_PB:
        raise InvalidRequest(where, f"unknown or unspecified environment status {value}")
    return _STATUS_FROM_PB[value]


def env_status_to_proto(status: EnvStatus) -> int:
    return _STATUS_TO_PB[status]


@dataclass(frozen=True)
class ToolSpec:
    """One tool of an environment (a public method of its class) and its JSON schema."""

    name: str
    description: str
    schema: dict[str, Any]
    """{"type": "function", "function": {"name", "description", "parameters", "return"?}}: what chat templates take
    (transformers.utils.get_json_schema's format)."""

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments object: {"type": "object", "properties": {...}, "required"?: [...]}."""
        return self.schema["function"]["parameters"]

    def schema_json(self) -> str:
        return json.dumps(self.schema, sort_keys=True)


@dataclass(frozen=True)
class EnvironmentSpec:
    """One environment a service runs, as ListEnvironments describes it."""

    name: str
    """What StartSession's `environment` selects: the script's factory-dict key, else the class name."""
    description: str
    tools: tuple[ToolSpec, ...]
    """Sorted by name."""
    has_reward: bool
    """Defines get_reward(): Finish returns a reward."""


@dataclass(frozen=True)
class EnvironmentCatalog:
    """Everything ListEnvironments answers: the environments and the service's deadlines and limits."""

    environments: tuple[EnvironmentSpec, ...]
    script_version: str
    call_timeout_seconds: float
    """Deadline of one call of environment code; an RPC deadline should exceed it."""
    session_idle_seconds: float
    """A session untouched this long is closed by the service."""
    max_sessions: int
    max_observation_chars: int

    def get(self, name: str) -> EnvironmentSpec:
        for spec in self.environments:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True)
class ToolCall:
    """A tool call as the model wrote it; the arguments stay text until the service checks them."""

    name: str
    arguments_json: str = "{}"

    @classmethod
    def of(cls, name: str, **arguments: Any) -> ToolCall:
        """A call with these arguments, JSON-encoded (tests and demos)."""
        return cls(name, json.dumps(arguments))


@dataclass(frozen=True)
class SessionStart:
    """How StartSession went: the first observation and the tools, or why the session never opened."""

    status: EnvStatus
    observation: str | None = None
    """reset()'s text for the end of the last user message; None when it returned None."""
    tools: tuple[ToolSpec, ...] = ()
    environment: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is EnvStatus.OK


@dataclass(frozen=True)
class StepResult:
    """How one Step went: the observation for the model and whether the session goes on."""

    status: EnvStatus
    observation: str = ""
    done: bool = False
    error: str = ""

