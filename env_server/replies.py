"""What an environment worker answers, decoded as plain data and checked field by field (environment code can write
to the reply pipe: the server only ever gets these types, or MalformedReply).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rlfleet.environments import EnvStatus, ToolSpec
from rlfleet.outcomes import RewardStatus
from rlfleet.workers.frames import MAX_ERROR_CHARS, MalformedReply, load_json

_ENV_STATUSES = {s.value: s for s in EnvStatus}
_REWARD_STATUSES = {s.value: s for s in RewardStatus}


@dataclass(frozen=True)
class Described:
    """One environment as its worker described it."""

    name: str
    description: str
    tools: tuple[ToolSpec, ...]
    has_reward: bool
    has_message: bool


@dataclass(frozen=True)
class Answer:
    """A start, tool, message or close reply: [status, observation, done, error]."""

    status: EnvStatus
    observation: str | None
    done: bool
    error: str = ""


@dataclass(frozen=True)
class Reward:
    """A finish reply: [status, reward, components, error]."""

    status: RewardStatus
    reward: float | None
    components: dict[str, float]
    error: str = ""


def _text(value: Any) -> str:
    """A str the wire can carry: lone surrogates (JSON allows them, protobuf does not) become U+FFFD."""
    return value.encode("utf-8", "replace").decode("utf-8") if isinstance(value, str) else ""


def decode_answer(frame: bytes) -> Answer:
    message = load_json(frame)
    if (type(message) is list and len(message) == 4 and message[0] in _ENV_STATUSES
            and (message[1] is None or type(message[1]) is str) and type(message[2]) is bool
            and type(message[3]) is str):
        status, observation, done, error = message
        return Answer(_ENV_STATUSES[status], None if observation is None else _text(observation), done,
                      _text(error)[:MAX_ERROR_CHARS])
    raise MalformedReply("not [status, observation, done, error]")


def decode_reward(frame: bytes) -> Reward:
    message = load_json(frame)
    if type(message) is list and len(message) == 4 and message[0] in _REWARD_STATUSES and type(message[3]) is str:
        status, reward, components, error = message
        numbers = [reward] if reward is not None else []
        if type(components) is dict:
            numbers += list(components.values())
            if all(type(v) in (int, float) and math.isfinite(v) for v in numbers) and all(
                    type(k) is str and len(k) <= 128 for k in components):
                return Reward(_REWARD_STATUSES[status], None if reward is None else float(reward),
                              {_text(k): float(v) for k, v in components.items()}, _text(error)[:MAX_ERROR_CHARS])
    raise MalformedReply("not [status, reward, components, error] with finite numbers")


def _tool(schema: Any) -> ToolSpec:
    function = schema.get("function") if type(schema) is dict else None
    name = function.get("name") if type(function) is dict else None
    parameters = function.get("parameters") if type(function) is dict else None
    if not (type(name) is str and name.isidentifier() and type(parameters) is dict
            and type(parameters.get("properties", {})) is dict and type(function.get("description", "")) is str):
        raise MalformedReply("a tool is not a function schema")
    return ToolSpec(name, function.get("description", ""), schema)


def decode_catalog(frame: bytes) -> list[Described] | str:
    """The environments a worker loaded, or the import error (a str) it reported."""
    message = load_json(frame)
    if type(message) is list and len(message) == 2:
        kind, payload = message
        if kind == "import_error" and type(payload) is str:
            return payload[:MAX_ERROR_CHARS]
        if kind == "ready" and type(payload) is list and payload:
            described = []
            for entry in payload:
                if not (type(entry) is dict and type(entry.get("name")) is str and type(entry.get("tools")) is list
                        and type(entry.get("description")) is str and type(entry.get("has_reward")) is bool
                        and type(entry.get("has_message")) is bool):
                    raise MalformedReply("an environment entry is malformed")
                tools = tuple(sorted((_tool(t) for t in entry["tools"]), key=lambda t: t.name))
                described.append(Described(entry["name"], entry["description"], tools, entry["has_reward"],
                                           entry["has_message"]))
            return described
    raise MalformedReply("not [\"ready\", environments] or [\"import_error\", message]")
