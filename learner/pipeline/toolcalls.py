"""Tool-call parsers: a model turn's text -> the tool calls it makes, or why one could not be read (pluggable by name).

    parser = make_parser("json")      # <tool_call>{"name": "calc", "arguments": {"expression": "2+3"}}</tool_call>
    calls = parser.parse(text, tools)  # [ToolCall | ParseError], in the order written; [] = a plain message

`json` is the Hermes / Qwen format most chat templates teach (`<tool_call>` tags around a JSON object
with `name` and `arguments`). `compact` is the tiny demo model's own format, `name(argument)` as the
whole turn, for tools of one parameter: at one token per byte, every character of a format costs the
tiny model a step it must learn, and `calc(12*34)` is 11 where the JSON form is over 60.

A call that cannot be read is a ParseError the model is told about (the environment never sees it);
what the arguments mean is the environment service's to check (BAD_ARGUMENTS, UNKNOWN_TOOL).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rlfleet.environments import ToolCall, ToolSpec


@dataclass(frozen=True)
class ParseError:
    """A tool call the parser found but could not read; `error` is shown to the model."""

    error: str


ParsedCall = ToolCall | ParseError


class ToolCallParser(Protocol):
    """Reads the tool calls of one model turn; [] means the turn is a plain message."""

    name: str

    def parse(self, text: str, tools: Sequence[ToolSpec]) -> list[ParsedCall]: ...


class JsonToolCalls:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number per turn (Hermes / Qwen 2.5 / Qwen 3)."""

    name = "json"
    _TAG = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)

    def parse(self, text: str, tools: Sequence[ToolSpec]) -> list[ParsedCall]:
        calls: list[ParsedCall] = []
        for match in self._TAG.finditer(text):
            body, closed = match.group(1).strip(), bool(match.group(2))
            if not closed:
                calls.append(ParseError("tool call has no closing </tool_call>"))
                continue
            calls.append(self._read(body))
        return calls

    @staticmethod
    def _read(body: str) -> ParsedCall:
        try:
            value = json.loads(body)
        except json.JSONDecodeError as err:
            return ParseError(f"tool call is not valid JSON: {err.msg} at character {err.pos}")
        if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
            return ParseError('tool call must be a JSON object with a string "name"')
        arguments = value.get("arguments", {})
        if isinstance(arguments, str):  # some templates teach arguments as a JSON string (OpenAI's wire form)
            return ToolCall(value["name"], arguments)
        return ToolCall(value["name"], json.dumps(arguments))


class CompactToolCalls:
    """`name(argument)` as the whole turn, the argument passed as the tool's only parameter (the tiny model's format)."""

    name = "compact"
    _CALL = re.compile(r"\s*([A-Za-z_]\w*)\((.*)\)\s*", re.DOTALL)

    def parse(self, text: str, tools: Sequence[ToolSpec]) -> list[ParsedCall]:
        match = self._CALL.fullmatch(text)
        if match is None:
            return []
        name, argument = match.groups()
        tool = next((t for t in tools if t.name == name), None)
        if tool is None:  # the service answers UNKNOWN_TOOL, and counts it
            return [ToolCall(name, json.dumps({"argument": argument}))]
        parameters = list(tool.parameters.get("properties", {}))
        if len(parameters) != 1:
            return [ParseError(f"tool {name!r} takes {len(parameters)} parameters; name(argument) passes one")]
        return [ToolCall(name, json.dumps({parameters[0]: argument}))]


PARSERS: dict[str, type[ToolCallParser]] = {"json": JsonToolCalls, "compact": CompactToolCalls}


def make_parser(name: str) -> ToolCallParser:
    """The parser registered under `name` (`json` or `compact`)."""
    if name not in PARSERS:
        raise ValueError(f"tool_call_format: unknown format {name!r}; choose from {sorted(PARSERS)}")
    return PARSERS[name]()
