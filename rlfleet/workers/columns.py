"""Dataset columns as they cross the wire: JSON text, decoded with a nesting limit (Score's items, StartSession)."""

from __future__ import annotations

import json
import re
from itertools import accumulate

from rlfleet.errors import InvalidRequest

# Nesting a column may have: dataset columns are a few levels deep, while 10,000 levels raised
# RecursionError in json.loads (INTERNAL), and a few hundred fewer would do so later, when the item is
# pickled to a worker or hashed for dedupe.
MAX_COLUMN_DEPTH = 64

_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # the unrolled form: 2.4x faster than (?:[^"\\]|\\.)*
_NOT_BRACKETS = re.compile(r'[^\[\]{}]+')
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SCALARS = frozenset({str, int, float, bool, type(None)})


def json_depth(text: str) -> int:
    """How deep lists/objects nest in `text`, which must be valid JSON (strings are cut out first: their
    brackets do not nest). Regex and accumulate run in C: ~20 ns per bracket, no Python recursion."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def decode_column(field: str, text: str, outer: int = 0):
    """The JSON value of one column; InvalidRequest naming `field` when it is not JSON or nests too deep.

    `outer`: levels of lists around the values themselves (1 for a column sent as one list over the
    batch), allowed on top of MAX_COLUMN_DEPTH.
    """
    limit = MAX_COLUMN_DEPTH + outer
    too_deep = InvalidRequest(field, f"JSON nests deeper than {MAX_COLUMN_DEPTH} levels of lists/objects")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidRequest(field, f"value is not JSON ({err.msg}); columns are JSON-encoded") from None
    except RecursionError:
        raise too_deep from None
    # Fewer brackets than the limit cannot nest past it, nor can a list of scalars (a column of answers
    # whose text holds braces, e.g. \frac{1}{2}): the depth is measured only when it might be too deep.
    if (text.count("[") + text.count("{") > limit and not (type(value) is list and _SCALARS.issuperset(map(type, value)))
            and json_depth(text) > limit):
        raise too_deep
    return value
