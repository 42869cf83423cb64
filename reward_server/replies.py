"""What a reward worker answers (outcomes, its catalog), decoded as plain data and checked field by field.

Frames come from rlfleet.workers.frames as JSON, or (outcomes) raw doubles then JSON, never unpickled: whatever
reward code writes into the pipe, the server only ever gets checked numbers and strings, or MalformedReply.
"""

from __future__ import annotations

import json
import math
from array import array

from reward_server.items import Outcome, Outcomes
from rlfleet.outcomes import RewardStatus
from rlfleet.workers.frames import MAX_ERROR_CHARS, MalformedReply, load_json

STATUSES = {s.value: s for s in RewardStatus}
OK = RewardStatus.OK


OUTCOMES = b"\x00"
"""First byte of an outcomes frame (a JSON frame never starts with it)."""


def encode_outcomes(outcomes: Outcomes) -> bytes:
    """The frame decode_reply reads (written by the worker): OUTCOMES, one float64 per item (native byte order:
    both ends run on this machine), then JSON [absent indices, [[index, status, error], ...]].

    Raw doubles rather than JSON numbers: 512 values took ~50 us to write and ~50 us to read as JSON, ~5 us each
    way as bytes. They are still plain data: any 8n bytes are n doubles, each checked on arrival.
    """
    failures = [[i, f.status.value, f.error] for i, f in outcomes.failures.items()]
    tail = json.dumps([outcomes.absent, failures]).encode()
    return OUTCOMES + array("d", outcomes.values).tobytes() + tail


def _index(entry, items: int) -> int:
    if type(entry) is int and 0 <= entry < items:
        return entry
    raise MalformedReply("an item index is not an integer within the chunk")


def _values(data: memoryview, items: int) -> list[float]:
    """One finite float per item (an honest worker turns anything else into a failure)."""
    if len(data) < 8 * items:
        raise MalformedReply(f"{len(data) // 8} values for {items} items")
    values = array("d")
    values.frombytes(data[:8 * items])
    values = values.tolist()
    # One pass in C for the common case; a sum of finite floats may overflow to inf, so check each before refusing.
    if not (math.isfinite(sum(values)) or all(math.isfinite(v) for v in values)):
        raise MalformedReply("a value is not a finite number")
    return values


def decode_reply(frame: bytes, items: int) -> Outcomes | str:
    """A chunk's reply: its Outcomes, or the message of the exception a batch function raised (["raised", message])."""
    if frame[:1] == OUTCOMES:
        view = memoryview(frame)
        out = Outcomes(_values(view[1:], items))
        tail = load_json(frame[1 + 8 * items:])
        if not (type(tail) is list and len(tail) == 2 and type(tail[0]) is list and type(tail[1]) is list):
            raise MalformedReply("outcomes do not end with [absent, failures]")
        out.absent = [_index(i, items) for i in tail[0]]
        for i in out.absent:  # an absent component adds nothing to the total, whatever the worker wrote
            out.values[i] = 0.0
        for entry in tail[1]:
            if not (type(entry) is list and len(entry) == 3 and entry[1] in STATUSES and entry[1] != "ok"
                    and type(entry[2]) is str):
                raise MalformedReply("a failure is not [index, status, error]")
            out.failures[_index(entry[0], items)] = Outcome(STATUSES[entry[1]], None, entry[2][:MAX_ERROR_CHARS])
        return out
    message = load_json(frame)
    if type(message) is list and len(message) == 2 and message[0] == "raised" and type(message[1]) is str:
        return message[1][:MAX_ERROR_CHARS]
    raise MalformedReply("not an outcomes frame or [\"raised\", message]")


def decode_catalog(frame: bytes) -> tuple[str, list[tuple[str, bool, str, str]] | str]:
    """("ready", [(name, batched, kind, description), ...]) or ("import_error", message)."""
    message = load_json(frame)
    if type(message) is list and len(message) == 2:
        kind, payload = message
        if kind == "import_error" and type(payload) is str:
            return kind, payload[:MAX_ERROR_CHARS]
        if kind == "ready" and type(payload) is list:
            catalog = []
            for entry in payload:
                if not (type(entry) is list and len(entry) == 4):
                    break
                name, batched, where, description = entry
                if not (type(name) is str and name.isidentifier() and type(batched) is bool
                        and where in ("builtin", "function") and type(description) is str):
                    break
                catalog.append((name, batched, where, description[:MAX_ERROR_CHARS]))
            else:
                return kind, catalog
    raise MalformedReply("not [\"ready\", functions] or [\"import_error\", message]")
