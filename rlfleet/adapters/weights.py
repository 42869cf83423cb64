"""Safetensors weights files: the header check every received adapter passes before it is written or loaded."""

from __future__ import annotations

import json
import struct

from rlfleet.errors import InvalidRequest


def check_safetensors(data: bytes) -> dict:
    """Parses a safetensors header (8-byte length + JSON); raises InvalidRequest if malformed.

    `data` may be just the file's beginning, as long as it holds the whole header.
    """
    if len(data) < 8:
        raise InvalidRequest("chunks.data", "not a safetensors file (shorter than its length prefix)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise InvalidRequest("chunks.data", "not a safetensors file (header longer than the payload)")
    try:
        header = json.loads(data[8:8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("chunks.data", "not a safetensors file (header is not JSON)") from None
    return {k: v for k, v in header.items() if k != "__metadata__"}
