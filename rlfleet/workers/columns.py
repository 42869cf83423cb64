"""Dataset columns as they cross the wire: JSON text, decoded with a nesting limit (Score's items, StartSession)."""

from __future__ import annotations

import json

from rlfleet.errors import InvalidRequest

# Nesting a column may have: dataset columns are a few levels deep, while 10,000 levels raised
# RecursionError in json.loads (INTERNAL), and a few hundred fewer would do so later, when the item is
# pickled to a worker or hashed for dedupe.
MAX_COLUMN_DEPTH = 64


def _nested_deeper(value, limit: int) -> bool:
    """Whether lists/dicts in `value` nest more than `limit` levels (iterative: no recursion of our own)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in node)
    return False


def decode_column(field: str, text: str):
    """The JSON value of one column; InvalidRequest naming `field` when it is not JSON or nests too deep."""
    too_deep = InvalidRequest(field, f"JSON nests deeper than {MAX_COLUMN_DEPTH} levels of lists/objects")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidRequest(field, f"value is not JSON ({err.msg}); columns are JSON-encoded") from None
    except RecursionError:
        raise too_deep from None
    # Fewer brackets than the limit cannot nest past it: the walk runs only for the rare column that might.
    if text.count("[") + text.count("{") > MAX_COLUMN_DEPTH and _nested_deeper(value, MAX_COLUMN_DEPTH):
        raise too_deep
    return value
