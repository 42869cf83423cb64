"""Tool-call parsers: the JSON tag format with good and bad JSON, and the tiny model's compact format."""

from __future__ import annotations

import json

import pytest

from learner.pipeline.toolcalls import ParseError, make_parser
from rlfleet.environments import ToolCall, ToolSpec


def _tool(name: str, *parameters: str) -> ToolSpec:
    properties = {p: {"type": "string"} for p in parameters}
    return ToolSpec(name, "", {"type": "function", "function": {
        "name": name, "parameters": {"type": "object", "properties": properties, "required": list(parameters)}}})


TOOLS = [_tool("calc", "expression"), _tool("move", "x", "y")]


def test_json_calls_in_order_with_arguments_as_json_text():
    text = ('Let me compute. <tool_call>{"name": "calc", "arguments": {"expression": "2+3"}}</tool_call> and '
            '<tool_call>\n{"name": "move", "arguments": "{\\"x\\": 1}"}\n</tool_call>')
    calls = make_parser("json").parse(text, TOOLS)
    assert calls == [ToolCall("calc", '{"expression": "2+3"}'), ToolCall("move", '{"x": 1}')]
    assert json.loads(calls[0].arguments_json) == {"expression": "2+3"}


def test_json_without_a_tag_is_a_plain_message():
    assert make_parser("json").parse('The answer is {"name": "calc"}', TOOLS) == []


@pytest.mark.parametrize(("body", "error"), [
    # 51 characters: the object's closing brace is missing where the text ends
    ('{"name": "calc", "arguments": {"expression": "2+3"}', "not valid JSON: Expecting ',' delimiter at character 51"),
    ("{'name': 'calc'}", "not valid JSON: Expecting property name enclosed in double quotes at character 1"),
    ('["calc"]', 'must be a JSON object with a string "name"'),
    ('{"arguments": {}}', 'must be a JSON object with a string "name"'),
    ('{"name": ""}', 'must be a JSON object with a string "name"'),
])
def test_json_bad_calls_are_parse_errors_beside_good_ones(body, error):
    text = f'<tool_call>{body}</tool_call><tool_call>{{"name": "calc"}}</tool_call>'
    bad, good = make_parser("json").parse(text, TOOLS)
    assert isinstance(bad, ParseError) and error in bad.error
    assert good == ToolCall("calc", "{}")  # no arguments given: an empty object, for the service to check


def test_json_unclosed_tag_is_a_parse_error():
    assert make_parser("json").parse('<tool_call>{"name": "calc"}', TOOLS) == [
        ParseError("tool call has no closing </tool_call>")]


def test_compact_passes_the_whole_argument_to_the_only_parameter():
    parser = make_parser("compact")
    assert parser.parse("calc(37*(58+1))", TOOLS) == [ToolCall("calc", '{"expression": "37*(58+1)"}')]
    assert parser.parse(" calc() \n", TOOLS) == [ToolCall("calc", '{"expression": ""}')]
    assert parser.parse("2146", TOOLS) == [] and parser.parse("so calc(2) it is", TOOLS) == []


def test_compact_unknown_tool_goes_to_the_service_and_two_parameters_cannot_be_written():
    parser = make_parser("compact")
    assert parser.parse("sqrt(9)", TOOLS) == [ToolCall("sqrt", '{"argument": "9"}')]
    assert parser.parse("move(1, 2)", TOOLS) == [
        ParseError("tool 'move' takes 2 parameters; name(argument) passes one")]


def test_unknown_format_names_the_option():
    with pytest.raises(ValueError, match="^tool_call_format: unknown format 'xml'"):
        make_parser("xml")
