"""What a reward worker answers (outcomes, its catalog), decoded as plain data and checked field by field.

Frames come from rlfleet.workers.frames as JSON, never unpickled: whatever reward code writes into the
pipe, the server only ever gets checked numbers and strings, or MalformedReply.
"""

from __future__ import annotations

import math

from reward_server.items import Outcome
from rlfleet.outcomes import RewardStatus
from rlfleet.workers.frames import MAX_ERROR_CHARS, MalformedReply, load_json

STATUSES = {s.value: s for s in RewardStatus}
OK = RewardStatus.OK


def _outcome(entry) -> Outcome:
    """One outcome from its wire form: a finite number (OK), null (OK, not applicable) or [status, error]."""
    if type(entry) is float and math.isfinite(entry):  # the common case first
        return Outcome(OK, entry)
    if entry is None:
        return Outcome(OK, None)
    if type(entry) is int and not isinstance(entry, bool):
        return Outcome(OK, float(entry))
    if type(entry) is list and len(entry) == 2 and entry[0] in STATUSES and entry[0] != "ok" and type(entry[1]) is str:
        return Outcome(STATUSES[entry[0]], None, entry[1][:MAX_ERROR_CHARS])
    raise MalformedReply("an outcome is not a finite number, null or [status, error]")


def encode_outcomes(outcomes: list[Outcome]) -> list:
    """The wire form decode_reply reads (used by the worker)."""
    return [o.value if o.status is OK else [o.status.value, o.error] for o in outcomes]


def decode_reply(frame: bytes, items: int) -> list[Outcome] | str:
    """A chunk's reply: one Outcome per item, or the message of the exception a batch function raised."""
    message = load_json(frame)
    if type(message) is list and len(message) == 2:
        kind, payload = message
        if kind == "raised" and type(payload) is str:
            return payload[:MAX_ERROR_CHARS]
        if kind == "ok" and type(payload) is list:
            if len(payload) != items:
                raise MalformedReply(f"{len(payload)} outcomes for {items} items")
            return [_outcome(entry) for entry in payload]
    raise MalformedReply("not [\"ok\", outcomes] or [\"raised\", message]")


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
