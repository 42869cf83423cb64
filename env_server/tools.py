"""Tools: a method's signature and docstring as a JSON schema (in the worker), and a tool call's arguments checked
against that schema (in the server), before any environment code runs.

The schema is transformers.utils.get_json_schema's (transformers 5.19), which TRL 1.16 renders into
prompts for an environment's methods, so a model sees the same tool description under rlfleet as
under TRL: Google-style docstring (description, then `Args:` with one `name: text` per argument,
optional `(choices: [...])`, optional `Returns:`), and a type hint on every argument. What it
cannot describe (no docstring, an argument without a description or type hint, *args/**kwargs, a
non-JSON Literal) is refused when the script loads, naming the method; transformers refuses the same.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

_DESCRIPTION = re.compile(r"^(.*?)[\n\s]*(Args:|Returns:|Raises:|\Z)", re.DOTALL)
_ARGS = re.compile(r"\n\s*Args:\n\s*(.*?)[\n\s]*(Returns:|Raises:|\Z)", re.DOTALL)
_ARG = re.compile(r"(?:^|\n)\s*(\w+):\s*(.*?)\s*(?=\n\s*\w+:|\Z)", re.DOTALL)
_RETURNS = re.compile(r"\n\s*Returns:\n\s*(.*?)[\n\s]*(Raises:|\Z)", re.DOTALL)
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)
_BASIC = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null", list: "array",
          tuple: "array", dict: "object"}
MAX_DEPTH = 32
"""Nesting of schema and arguments the checker follows; deeper is refused (a model's JSON can nest without end)."""


class SchemaError(ValueError):
    """A tool method that cannot be described as a JSON schema; the message names what is missing."""


def type_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of one type hint (int -> {"type": "integer"}, list[str] -> array of strings, ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None:
        if hint is Any:
            return {}
        # A class of its own is an object, as transformers has it: the tool receives the JSON object (a dict).
        return {"type": _BASIC.get(hint, "object")}
    if origin is Union or origin is types.UnionType:
        parts = [type_schema(a) for a in args if a is not type(None)]
        if len(parts) == 1:
            out = parts[0]
        elif all(p.keys() == {"type"} and isinstance(p["type"], str) for p in parts):
            names = sorted({p["type"] for p in parts})
            out = {"type": names[0] if len(names) == 1 else names}
        else:
            out = {"anyOf": parts}
        if type(None) in args:
            out["nullable"] = True
        return out
    if origin is Literal:
        kinds = []
        for value in args:
            if type(value) not in (int, float, str, bool, type(None)):
                raise SchemaError(f"Literal value {value!r} is not a JSON scalar")
            if _BASIC[type(value)] not in kinds:
                kinds.append(_BASIC[type(value)])
        return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": list(args)}
    if origin is list:
        return {"type": "array", "items": type_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if len(args) == 1 or ... in args:
            raise SchemaError(f"{hint!r}: use list[...] for a sequence, or a tuple of two or more fixed types")
        return {"type": "array", "prefixItems": [type_schema(a) for a in args]} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1])} if len(args) == 2 else {"type": "object"}
    raise SchemaError(f"type hint {hint!r} has no JSON schema")


def parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """(description, {argument: text}, returns text) of a Google-style docstring."""
    description = _DESCRIPTION.search(doc)
    args = _ARGS.search(doc)
    returns = _RETURNS.search(doc)
    arguments = {}
    if args:
        block = "\n".join(line for line in args.group(1).strip().split("\n") if line.strip())
        arguments = {name: re.sub(r"\s*\n+\s*", " ", text.strip()) for name, text in _ARG.findall(block)}
    return (description.group(1).strip() if description else ""), arguments, (returns.group(1).strip() if returns
                                                                             else None)


def tool_schema(fn: Callable[..., Any], name: str | None = None) -> dict[str, Any]:
    """{"type": "function", "function": {...}} for a function or method (its `self` is skipped); SchemaError if it
    cannot be described."""
    name = name or fn.__name__
    doc = inspect.getdoc(fn)
    if not doc:
        raise SchemaError(f"tool {name} has no docstring (the model needs its description)")
    description, texts, returns = parse_docstring(doc.strip())
    try:
        hints = typing.get_type_hints(fn)
    except Exception as err:  # noqa: BLE001 - an unresolvable annotation is the script's to fix
        raise SchemaError(f"tool {name}: cannot resolve its type hints ({err})") from None
    properties, required = {}, []
    for i, (arg, param) in enumerate(inspect.signature(fn).parameters.items()):
        if i == 0 and arg in ("self", "cls") and param.annotation is inspect.Parameter.empty:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise SchemaError(f"tool {name}: *{arg} cannot be described to the model; name each argument")
        if arg not in hints:
            raise SchemaError(f"tool {name}: argument {arg!r} has no type hint")
        if arg not in texts:
            raise SchemaError(f"tool {name}: argument {arg!r} has no description in the docstring's Args: section")
        schema = type_schema(hints[arg])
        text = texts[arg]
        if choices := _CHOICES.search(text):
            try:
                schema["enum"] = [c.strip() if isinstance(c, str) else c for c in json.loads(choices.group(1))]
            except (ValueError, TypeError):
                raise SchemaError(f"tool {name}: argument {arg!r}: (choices: ...) is not a JSON list") from None
            text = text[:choices.start()].strip()
        schema["description"] = text
        properties[arg] = schema
        if param.default is inspect.Parameter.empty:
            required.append(arg)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    function: dict[str, Any] = {"name": name, "description": description, "parameters": parameters}
    if "return" in hints:
        function["return"] = type_schema(hints["return"])
        if returns is not None:
            function["return"]["description"] = returns
    return {"type": "function", "function": function}


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}


class BadArguments(ValueError):
    """A tool call's arguments do not fit the tool's parameters; the message names the argument."""


def check_value(schema: Any, value: Any, where: str, depth: int = 0) -> Any:
    """`value` checked against one schema node, integral floats of integer fields made ints; BadArguments else."""
    if depth > MAX_DEPTH:
        raise BadArguments(f"{where}: nests deeper than {MAX_DEPTH} levels")
    if not isinstance(schema, dict) or (value is None and schema.get("nullable")):
        return value
    if "enum" in schema and value not in schema["enum"]:
        raise BadArguments(f"{where}: {value!r} is not one of {schema['enum']}")
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            try:
                return check_value(option, value, where, depth + 1)
            except BadArguments:
                continue
        raise BadArguments(f"{where}: {_short(value)} matches none of the accepted types")
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else None
    if kinds is not None:
        kind = next((k for k in kinds if k in _CHECKS and _CHECKS[k](value)), None)
        if kind is None:
            raise BadArguments(f"{where}: expected {' or '.join(map(str, kinds))}, got {_json_type(value)}")
        if kind == "integer":
            value = int(value)
    if isinstance(value, list):
        items, fixed = schema.get("items"), schema.get("prefixItems")
        if isinstance(fixed, list) and len(fixed) != len(value):
            raise BadArguments(f"{where}: expected {len(fixed)} items, got {len(value)}")
        value = [check_value(fixed[i] if isinstance(fixed, list) else items, v, f"{where}[{i}]", depth + 1)
                 for i, v in enumerate(value)]
    elif isinstance(value, dict) and "additionalProperties" in schema:
        value = {k: check_value(schema["additionalProperties"], v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    return value


def check_arguments(parameters: dict[str, Any], arguments: Any, tool: str) -> dict[str, Any]:
    """The keyword arguments of a call of `tool`, checked against its parameters schema; BadArguments names the
    first problem (not an object, an unknown or missing argument, a wrong JSON type)."""
    if not isinstance(arguments, dict):
        raise BadArguments(f"arguments of {tool} must be a JSON object, got {_json_type(arguments)}")
    properties = parameters.get("properties", {})
    for name in arguments:
        if name not in properties:
            raise BadArguments(f"{tool} has no argument {name!r} (it takes {', '.join(properties) or 'none'})")
    for name in parameters.get("required", []):
        if name not in arguments:
            raise BadArguments(f"{tool} needs argument {name!r}")
    return {name: check_value(properties[name], value, name) for name, value in arguments.items()}


def _json_type(value: Any) -> str:
    for kind in ("boolean", "integer", "number", "string", "null", "array", "object"):
        if _CHECKS[kind](value) and not (kind == "integer" and isinstance(value, float)):
            return kind
    return type(value).__name__


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
