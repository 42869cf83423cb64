"""Tool schemas from signatures and docstrings (hand-written expected schemas), and tool-call argument checks."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from env_server.tools import BadArguments, SchemaError, check_arguments, tool_schema


class Calculator:
    def add(self, a: int, b: float = 0.0) -> float:
        """
        Adds two numbers.

        Args:
            a: The first number,
                an integer.
            b: The second number.

        Returns:
            The sum.
        """
        return a + b

    def pick(self, color: Literal["red", "blue"], sizes: list[int], tags: dict[str, bool] | None = None,
             anything: Any = None, unit: str = "cm"):
        """Picks things.

        Args:
            color: The colour.
            sizes: Sizes to try.
            tags: Optional flags.
            anything: Whatever.
            unit: The unit (choices: ["cm", " in"])
        """

    def pair(self, point: tuple[int, str], mixed: int | str, many: list[int] | str):
        """Pairs.

        Args:
            point: A point.
            mixed: Either.
            many: A list or a text.
        """


ADD = {"type": "function", "function": {
    "name": "add",
    "description": "Adds two numbers.",
    "parameters": {"type": "object", "properties": {
        # a's two docstring lines are joined with one space
        "a": {"type": "integer", "description": "The first number, an integer."},
        "b": {"type": "number", "description": "The second number."},
    }, "required": ["a"]},  # b has a default
    "return": {"type": "number", "description": "The sum."},
}}

PICK = {"type": "function", "function": {
    "name": "pick",
    "description": "Picks things.",
    "parameters": {"type": "object", "properties": {
        "color": {"type": "string", "enum": ["red", "blue"], "description": "The colour."},
        "sizes": {"type": "array", "items": {"type": "integer"}, "description": "Sizes to try."},
        "tags": {"type": "object", "additionalProperties": {"type": "boolean"}, "nullable": True,
                 "description": "Optional flags."},
        "anything": {"description": "Whatever."},  # Any: no type
        "unit": {"type": "string", "enum": ["cm", "in"], "description": "The unit"},  # choices stripped
    }, "required": ["color", "sizes"]},
}}

PAIR = {"type": "function", "function": {
    "name": "pair",
    "description": "Pairs.",
    "parameters": {"type": "object", "properties": {
        "point": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "description": "A point."},
        "mixed": {"type": ["integer", "string"], "description": "Either."},  # basic types: a list, sorted
        "many": {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "string"}],
                 "description": "A list or a text."},
    }, "required": ["point", "mixed", "many"]},
}}


@pytest.mark.parametrize(("method", "expected"), [(Calculator.add, ADD), (Calculator.pick, PICK),
                                                  (Calculator.pair, PAIR)])
def test_schema_from_signature_and_docstring(method, expected):
    assert tool_schema(method) == expected
    assert tool_schema(getattr(Calculator(), method.__name__)) == expected  # bound: no self either way


def test_schema_matches_transformers_get_json_schema():
    """TRL renders environment methods with transformers' get_json_schema: the model must see the same text."""
    get_json_schema = pytest.importorskip("transformers.utils").get_json_schema
    for method in (Calculator.add, Calculator.pick, Calculator.pair):
        assert tool_schema(method) == get_json_schema(method)


def _no_doc(self, a: int):
    return a


def _undescribed(self, a: int, b: int):
    """Does.

    Args:
        a: One.
    """


def _unhinted(self, a):
    """Does.

    Args:
        a: One.
    """


def _star(self, *rest: int):
    """Does.

    Args:
        rest: All.
    """


@pytest.mark.parametrize(("fn", "message"), [
    (_no_doc, "tool _no_doc has no docstring"),
    (_undescribed, "tool _undescribed: argument 'b' has no description"),
    (_unhinted, "tool _unhinted: argument 'a' has no type hint"),
    (_star, r"tool _star: \*rest cannot be described"),
])
def test_undescribable_tools_are_refused_by_name(fn, message):
    with pytest.raises(SchemaError, match=message):
        tool_schema(fn)


ADD_PARAMS = ADD["function"]["parameters"]
PICK_PARAMS = PICK["function"]["parameters"]
PAIR_PARAMS = PAIR["function"]["parameters"]


def test_arguments_that_fit_pass_with_integral_floats_made_ints():
    assert check_arguments(ADD_PARAMS, {"a": 2.0, "b": 1}, "add") == {"a": 2, "b": 1}
    assert type(check_arguments(ADD_PARAMS, {"a": 2.0}, "add")["a"]) is int
    args = {"color": "red", "sizes": [1, 2.0], "tags": None, "anything": {"x": [1]}}
    assert check_arguments(PICK_PARAMS, args, "pick") == {**args, "sizes": [1, 2]}
    assert check_arguments(PAIR_PARAMS, {"point": [1, "a"], "mixed": "s", "many": [3]}, "pair")["many"] == [3]


@pytest.mark.parametrize(("params", "arguments", "message"), [
    (ADD_PARAMS, [1, 2], "arguments of add must be a JSON object, got array"),
    (ADD_PARAMS, {"b": 1.0}, "add needs argument 'a'"),
    (ADD_PARAMS, {"a": 1, "c": 2}, r"add has no argument 'c' \(it takes a, b\)"),
    (ADD_PARAMS, {"a": "1"}, "a: expected integer, got string"),
    (ADD_PARAMS, {"a": 1.5}, "a: expected integer, got number"),
    (ADD_PARAMS, {"a": True}, "a: expected integer, got boolean"),  # a bool is no number in JSON
    (ADD_PARAMS, {"a": 1, "b": None}, "b: expected number, got null"),
    (PICK_PARAMS, {"color": "green", "sizes": []}, r"color: 'green' is not one of \['red', 'blue'\]"),
    (PICK_PARAMS, {"color": "red", "sizes": [1, "2"]}, r"sizes\[1\]: expected integer, got string"),
    (PICK_PARAMS, {"color": "red", "sizes": [], "tags": {"k": 1}}, "tags.k: expected boolean, got integer"),
    (PAIR_PARAMS, {"point": [1], "mixed": 1, "many": "x"}, "point: expected 2 items, got 1"),
    (PAIR_PARAMS, {"point": [1, "a"], "mixed": 1.5, "many": "x"}, "mixed: expected integer or string, got number"),
    (PAIR_PARAMS, {"point": [1, "a"], "mixed": 1, "many": 2}, "many: 2 matches none of the accepted types"),
])
def test_arguments_that_do_not_fit_name_the_argument(params, arguments, message):
    with pytest.raises(BadArguments, match=message):
        check_arguments(params, arguments, "add" if params is ADD_PARAMS else "x")


def test_deep_arguments_are_refused_not_recursed():
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    nested = {"type": "array"}
    for _ in range(100):
        nested = {"type": "array", "items": nested}
    with pytest.raises(BadArguments, match="nests deeper than 32 levels"):
        check_arguments({"properties": {"x": nested}}, {"x": deep}, "t")
