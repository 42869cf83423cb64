"""The pipe between a service and its worker: length-prefixed frames, replies decoded as plain data only.

A frame is a 4-byte big-endian signed length, then the bytes (multiprocessing.connection's layout).
The worker reads requests with `read_frame` and answers with `send`. The server reads replies with `Frames`,
which never blocks past a deadline, and decodes them with `load_json` alone, then checks each field (the
service's replies.py): whatever user code writes into the pipe, the server only ever gets data or MalformedReply.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time

HEADER = struct.Struct("!i")
MAX_FRAME_BYTES = 64 * 1024**2
"""Largest reply accepted; a chunk's outcomes take a few KiB."""
MAX_ERROR_CHARS = 2000
READ_BYTES = 1 << 16
"""Bytes asked for per read of a reply: a reply of 512 outcomes takes ~4 KiB, and os.read allocates what it asks for
(1 MiB was an mmap and a page fault per read); a bigger frame takes several reads."""


class MalformedReply(Exception):
    """A worker wrote something no honest worker writes (a pickle, a wrong shape, a huge frame)."""


def write_frame(fd: int, data: bytes, deadline: float) -> None:
    """Writes one frame to a non-blocking fd; TimeoutError once `deadline` (time.monotonic) passes."""
    view = memoryview(HEADER.pack(len(data)) + data)
    try:  # the common case: the pipe has room, one write and no poll
        view = view[os.write(fd, view):]
    except BlockingIOError:
        pass
    poller = None
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the worker stopped reading its requests")
        if poller is None:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
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
    send_frame(fd, json.dumps(message).encode())


def send_frame(fd: int, data: bytes) -> None:
    """Writes one frame of bytes to a blocking fd (the worker's side; a service's own plain-data layout, which its
    server decodes without pickle: reward_server.replies)."""
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
        data = os.read(self.fd, READ_BYTES)
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


def load_json(frame: bytes):
    """A reply frame as JSON data (json alone: never a pickle); MalformedReply when it is not JSON."""
    try:
        return json.loads(frame)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise MalformedReply(f"not JSON: {str(err)[:80]}") from None
