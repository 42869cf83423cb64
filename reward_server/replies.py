"""The pipe between the reward server and a worker: length-prefixed frames, replies decoded as plain data only.

A frame is a 4-byte big-endian signed length, then the bytes (multiprocessing.connection's layout).
The worker reads requests with `read_frame` and answers with `send`. The server reads replies with `Frames`,
which never blocks past a deadline, and decodes them with `json` alone into checked numbers and
strings: whatever reward code writes into the pipe, the server only ever gets data or MalformedReply.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import time

from reward_server.items import Outcome
from rlfleet.outcomes import RewardStatus

HEADER = struct.Struct("!i")
MAX_FRAME_BYTES = 64 * 1024**2
"""Largest reply accepted; a chunk's outcomes take a few KiB."""
MAX_ERROR_CHARS = 2000
STATUSES = {s.value: s for s in RewardStatus}
OK = RewardStatus.OK


class MalformedReply(Exception):
    """A worker wrote something no honest worker writes (a pickle, a wrong shape, a huge frame)."""


def write_frame(fd: int, data: bytes, deadline: float) -> None:
    """Writes one frame to a non-blocking fd; TimeoutError once `deadline` (time.monotonic) passes."""
    view = memoryview(HEADER.pack(len(data)) + data)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the reward worker stopped reading its requests")
        if poller.poll(min(remaining, 0.05) * 1000):
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue


def read_frame(fd: int) -> bytes:
    """One whole frame from a blocking fd (the worker's side); EOFError when the server closed the pipe."""
    def exactly(n: int) -> bytes:
        chunks = []
        while n:
            chunk = os.read(fd, n)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    (size,) = HEADER.unpack(exactly(HEADER.size))
    return exactly(size)


def send(fd: int, message) -> None:
    """Writes `message` as one JSON frame to a blocking fd (the worker's side)."""
    data = json.dumps(message).encode()
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


class Frames:
    """Reads frames from a pipe as bytes arrive (call fill() when it is readable, then pop())."""

    def __init__(self, fd: int):
        self.fd = fd
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self.fd

    def fill(self) -> None:
        """Reads what is available; raises EOFError when the other end closed the pipe."""
        data = os.read(self.fd, 1 << 20)
        if not data:
            raise EOFError
        self._buffer += data

    def pop(self) -> bytes | None:
        """The next complete frame, or None while it is still arriving."""
        if len(self._buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buffer)
        if not 0 <= size <= MAX_FRAME_BYTES:
            raise MalformedReply(f"frame header announces {size} bytes")
        if len(self._buffer) < HEADER.size + size:
            return None
        frame = bytes(self._buffer[HEADER.size:HEADER.size + size])
        del self._buffer[:HEADER.size + size]
        return frame


def _load(frame: bytes):
    try:
        return json.loads(frame)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise MalformedReply(f"not JSON: {str(err)[:80]}") from None


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
    message = _load(frame)
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
    message = _load(frame)
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
