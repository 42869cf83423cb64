"""The receiving side of an adapter stream: order, size, checksum and content checks, and the one read loop that uses them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import xxhash

from rlfleet.adapters.payload import AdapterPayload
from rlfleet.adapters.spool import Spool
from rlfleet.adapters.weights import check_lora_config, check_weights
from rlfleet.adapters.wire import decode_chunk
from rlfleet.errors import InvalidRequest
from rlfleet.v1 import common_pb2


class AdapterAssembler:
    """Rebuilds an AdapterPayload from chunks, checking order, size and checksum as they arrive.

    Chunks are AdapterChunk messages or their serialised bytes (then read without copying, see
    `decode_chunk`). Without `spool_dir` the weights are kept in memory. With it, each slice is
    hashed on arrival and handed to a thread that appends it to a staging file in `spool_dir` while
    the next ones are received, and `finish()` returns a payload whose weights are that file.
    `discard()` removes the staging file of a stream that was rejected or not used.
    """

    def __init__(self, max_bytes: int = 4 * 1024**3, spool_dir: str | Path | None = None):
        self.max_bytes = max_bytes
        self.header: common_pb2.AdapterHeader | None = None
        self._spool_dir = Path(spool_dir) if spool_dir is not None else None
        self._parts: list[bytes | memoryview] = []
        self._received = 0
        self._digest = xxhash.xxh3_128()
        self._spool: Spool | None = None

    def add(self, chunk: common_pb2.AdapterChunk | bytes) -> None:
        if isinstance(chunk, bytes):
            part = decode_chunk(chunk)
        else:
            part = chunk.header if chunk.WhichOneof("part") == "header" else chunk.data
        if self.header is None:
            if not isinstance(part, common_pb2.AdapterHeader):
                raise InvalidRequest("chunks[0].header", "the first chunk must be the adapter header")
            self._check_header(part)
            self.header = part
            if self._spool_dir is not None:
                self._spool = Spool(self._spool_dir)
            return
        if isinstance(part, common_pb2.AdapterHeader):
            raise InvalidRequest("chunks.header", "only the first chunk may carry a header")
        self._received += len(part)
        if self._received > self.header.total_bytes:
            raise InvalidRequest("chunks.data", f"more than header.total_bytes={self.header.total_bytes} bytes sent")
        self._digest.update(part)
        if self._spool is not None:
            self._spool.put(part)
        else:
            self._parts.append(part)

    def _check_header(self, header: common_pb2.AdapterHeader) -> None:
        if header.policy_version < 1:
            raise InvalidRequest("header.policy_version", "must be >= 1 (0 is the base model)")
        if header.total_bytes == 0 or header.total_bytes > self.max_bytes:
            raise InvalidRequest("header.total_bytes", f"must be in [1, {self.max_bytes}], got {header.total_bytes}")
        if len(header.xxh3_128) != 32:
            raise InvalidRequest("header.xxh3_128", "must be 32 lower-case hex characters")
        try:
            config = json.loads(header.adapter_config_json)
        except json.JSONDecodeError as err:
            raise InvalidRequest("header.adapter_config_json", f"not JSON: {err.msg}") from None
        if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA" or "r" not in config:
            raise InvalidRequest("header.adapter_config_json", "not a PEFT LoRA config (needs peft_type LORA and r)")
        check_lora_config(config)

    def finish(self) -> AdapterPayload:
        """The complete payload; raises InvalidRequest when bytes are missing, the checksum differs, or
        the weights are malformed or not all finite (`check_weights`).

        Blocks until a spooled stream is on disk: call it from a thread in async code.
        """
        if self.header is None:
            raise InvalidRequest("chunks", "empty stream: no adapter header")
        try:
            weights: bytes | Path = self._spool.close() if self._spool is not None else b"".join(self._parts)
            if self._received != self.header.total_bytes:
                raise InvalidRequest("chunks.data",
                                     f"got {self._received} bytes, header.total_bytes={self.header.total_bytes}")
            digest = self._digest.hexdigest()
            if digest != self.header.xxh3_128.lower():
                raise InvalidRequest("header.xxh3_128", f"checksum mismatch: payload hashes to {digest}")
            payload = AdapterPayload(self.header.policy_version, self.header.base_model_id,
                                     self.header.adapter_config_json, weights, self.header.run_id)
            payload.__dict__["checksum"] = digest  # its cached_property: the stream was just hashed
            check_weights(weights)
        except BaseException:
            self.discard()
            raise
        return payload

    def discard(self) -> None:
        """Drops a staged file that was not moved into place (safe to call at any time, and twice)."""
        if self._spool is not None:
            self._spool.close(check=False)
            self._spool.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class ReceivedAdapter:
    """A verified adapter and when its first chunk arrived (`time.perf_counter()`; where its load time starts)."""

    payload: AdapterPayload
    first_chunk_at: float


@asynccontextmanager
async def receive_adapter(chunks: AsyncIterable[common_pb2.AdapterChunk | bytes],
                          spool_dir: str | Path | None) -> AsyncIterator[ReceivedAdapter]:
    """Reads a whole AdapterChunk stream (spooled to `spool_dir` when given), verifies it and yields it.

    The one read loop for both directions an adapter reaches a generator: pushed by the learner
    (LoadAdapter) and pulled from it (GetPolicy). The stream is read to its end even after a bad
    chunk, and the error raised only then: a status sent while the client was still streaming chunks
    crashed the client's gRPC core (grpcio 1.85: "ILLEGAL STATE: FORWARDED_BATCH"). Raises
    InvalidRequest for a stream that is out of order, short, long or fails its checksum. On leaving
    the block a staged file that was not moved into place (`write_adapter_dir`) is deleted.
    """
    assembler = AdapterAssembler(spool_dir=spool_dir)
    first_chunk_at: float | None = None
    failure: Exception | None = None
    try:
        async for chunk in chunks:
            first_chunk_at = first_chunk_at or time.perf_counter()
            if failure is None:
                try:
                    assembler.add(chunk)
                except Exception as err:  # noqa: BLE001 - raised below, once the sender finished
                    failure = err
        if failure is not None:
            raise failure
        payload = await asyncio.to_thread(assembler.finish)  # waits for the spool thread: off the event loop
        yield ReceivedAdapter(payload, first_chunk_at or time.perf_counter())
    finally:
        assembler.discard()
