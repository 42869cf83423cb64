"""Adapter chunking: round trip, hand framing vs protobuf, spooling, checksum/size/order errors, base-model identity."""

from __future__ import annotations

import asyncio
import json
import platform
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rlfleet.adapters.identity import base_model_id
from rlfleet.adapters.payload import AdapterPayload, adapter_from_dir, checksum, write_adapter_dir
from rlfleet.adapters.receive import AdapterAssembler, receive_adapter
from rlfleet.adapters.spool import keep_as_spare
from rlfleet.adapters.wire import decode_chunk, encode_chunks, to_chunks
from rlfleet.errors import InvalidRequest
from rlfleet.v1 import common_pb2


def _payload(n: int = 5000) -> AdapterPayload:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n // 4], "data_offsets": [0, n // 4 * 4]}}).encode()
    # Bytes below 0x80 never set a float32's whole exponent (its top byte's low 7 bits and the next
    # byte's high bit): every value is finite, as the receiver requires.
    weights = struct.pack("<Q", len(header)) + header + bytes(range(128)) * (n // 128) + b"x" * (n % 128)
    return AdapterPayload(3, "base123", json.dumps({"peft_type": "LORA", "r": 4}), weights)


def test_round_trip_in_small_chunks(tmp_path):
    payload = _payload()
    chunks = list(to_chunks(payload, chunk_bytes=1000))
    assert chunks[0].WhichOneof("part") == "header" and len(chunks) == 1 + -(-len(payload.weights) // 1000)
    assembler = AdapterAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    assert assembler.finish() == payload
    folder = write_adapter_dir(payload, tmp_path / "v3")
    assert adapter_from_dir(folder, 3, "base123") == payload


def test_bad_checksum_is_rejected_naming_the_field():
    chunks = list(to_chunks(_payload()))
    chunks[0].header.xxh3_128 = "0" * 32
    assembler = AdapterAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    with pytest.raises(InvalidRequest, match="header.xxh3_128"):
        assembler.finish()


def test_checksum_is_xxh3_128_of_the_bytes_or_the_file(tmp_path):
    # Pinned XXH3-128 (seed 0) of b"abc": a silent change of algorithm or of hex formatting fails here.
    assert checksum(b"abc") == "06b05ab6733a618578af5f94892f3950"
    (tmp_path / "w").write_bytes(b"abc")
    assert checksum(tmp_path / "w") == checksum(memoryview(b"xabc")[1:]) == checksum(b"abc")


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 3000])
def test_hand_framed_chunks_are_byte_identical_to_protobuf(size):
    payload = _payload(max(size, 300))
    framed = list(encode_chunks(payload, chunk_bytes=max(size, 1)))
    proto = [c.SerializeToString() for c in to_chunks(payload, chunk_bytes=max(size, 1))]
    assert framed == proto
    assert decode_chunk(framed[0]) == proto_header(payload)
    data = [decode_chunk(raw) for raw in framed[1:]]
    assert all(isinstance(d, memoryview) for d in data) and b"".join(data) == payload.weights


def proto_header(payload: AdapterPayload) -> common_pb2.AdapterHeader:
    return next(to_chunks(payload)).header


def test_decode_chunk_reads_other_encodings_through_protobuf_and_rejects_garbage():
    # A data field followed by an unknown field (what a newer client might send): not the fast path.
    raw = common_pb2.AdapterChunk(data=b"xyz").SerializeToString() + b"\x78\x01"
    assert bytes(decode_chunk(raw)) == b"xyz"
    with pytest.raises(InvalidRequest, match="chunks"):
        decode_chunk(b"\x12\x05ab")  # declares 5 bytes, carries 2


def test_spooled_stream_lands_in_a_staging_file_that_is_moved_into_place(tmp_path):
    payload = _payload(10_000)
    assembler = AdapterAssembler(spool_dir=tmp_path / ".incoming")
    for raw in encode_chunks(payload, chunk_bytes=999):
        assembler.add(raw)
    staged = assembler.finish()
    assert isinstance(staged.weights, Path) and staged.weights.read_bytes() == payload.weights
    assert staged.nbytes == len(payload.weights) and staged.tensor_table() == payload.tensor_table()
    folder = write_adapter_dir(staged, tmp_path / "v3", durable=False)
    assert not staged.weights.exists() and adapter_from_dir(folder, 3, "base123") == payload
    assembler.discard()  # after the move: nothing left to drop, and no error
    assert list((tmp_path / ".incoming").iterdir()) == []


def test_a_spare_file_is_written_over_and_cut_to_the_new_length(tmp_path):
    spool = tmp_path / ".incoming"
    for name, size in (("short", 10), ("long", 50_000)):   # keep=1: the older spare is deleted
        (tmp_path / name).write_bytes(b"z" * size)
        keep_as_spare(tmp_path / name, spool)
    (spare,) = spool.iterdir()
    inode = spare.stat().st_ino
    payload = _payload(10_000)
    assembler = AdapterAssembler(spool_dir=spool)
    for raw in encode_chunks(payload, chunk_bytes=999):
        assembler.add(raw)
    staged = assembler.finish()
    assert staged.weights.stat().st_ino == inode   # the same file (its pages), not a new one
    assert staged.weights.read_bytes() == payload.weights   # 50,000 bytes cut to the payload's length
    assert list(spool.iterdir()) == [staged.weights]


def test_rejected_spooled_stream_leaves_no_file(tmp_path):
    chunks = list(encode_chunks(_payload(10_000), chunk_bytes=999))
    bad = AdapterAssembler(spool_dir=tmp_path)
    for raw in chunks[:-1]:
        bad.add(raw)
    with pytest.raises(InvalidRequest, match="total_bytes"):
        bad.finish()
    abandoned = AdapterAssembler(spool_dir=tmp_path)
    for raw in chunks[:3]:
        abandoned.add(raw)
    abandoned.discard()
    assert list(tmp_path.iterdir()) == []


def test_missing_header_missing_bytes_and_extra_bytes():
    payload = _payload()
    with pytest.raises(InvalidRequest, match="header"):
        AdapterAssembler().add(common_pb2.AdapterChunk(data=b"abc"))
    short = AdapterAssembler()
    chunks = list(to_chunks(payload, chunk_bytes=1000))
    for chunk in chunks[:-1]:
        short.add(chunk)
    with pytest.raises(InvalidRequest, match="total_bytes"):
        short.finish()
    extra = AdapterAssembler()
    for chunk in chunks:
        extra.add(chunk)
    with pytest.raises(InvalidRequest, match="more than"):
        extra.add(common_pb2.AdapterChunk(data=b"!"))


def test_non_lora_config_is_rejected():
    chunks = list(to_chunks(_payload()))
    chunks[0].header.adapter_config_json = json.dumps({"peft_type": "PREFIX_TUNING"})
    with pytest.raises(InvalidRequest, match="adapter_config_json"):
        AdapterAssembler().add(chunks[0])


class _Sender:
    """An async stream of chunks that counts how many the reader took."""

    def __init__(self, chunks):
        self.chunks, self.taken = chunks, 0

    async def __aiter__(self):
        for chunk in self.chunks:
            self.taken += 1
            yield chunk


def _receive(sender: _Sender, spool_dir: Path) -> bytes:
    """Runs `receive_adapter` over `sender`; returns the staged weights read inside the block."""
    async def run():
        async with receive_adapter(sender, spool_dir) as received:
            assert received.payload.weights.parent == spool_dir   # spooled to a file, not kept in memory
            assert received.first_chunk_at > 0
            return received.payload.weights.read_bytes()
    return asyncio.run(run())


def test_the_reader_spools_a_whole_stream_and_drops_the_unused_file(tmp_path):
    payload = _payload(10_000)
    sender = _Sender(list(encode_chunks(payload, chunk_bytes=999)))
    assert _receive(sender, tmp_path) == payload.weights
    assert sender.taken == 1 + 11   # header + ceil(10,000 / 999) slices
    assert list(tmp_path.iterdir()) == []   # not moved into place inside the block: deleted on leaving it


@pytest.mark.parametrize("spoil, match", [
    ("checksum", "checksum mismatch"), ("short", "total_bytes"), ("second header", "only the first chunk"),
])
def test_the_reader_reads_a_bad_stream_to_its_end_then_raises(tmp_path, spoil, match):
    chunks = list(to_chunks(_payload(10_000), chunk_bytes=999))   # header + 11 slices
    if spoil == "checksum":
        chunks[0].header.xxh3_128 = "0" * 32
    elif spoil == "short":
        chunks.pop()
    else:
        chunks.insert(2, chunks[0])
    sender = _Sender(chunks)
    with pytest.raises(InvalidRequest, match=match):
        _receive(sender, tmp_path)
    # every chunk taken before the error: a status sent mid-stream crashed the sender's gRPC core
    assert sender.taken == len(chunks)
    assert list(tmp_path.iterdir()) == []


def test_base_model_id_is_stable_and_tells_models_apart(tiny_model_dir, tmp_path):
    from launcher.tiny_model import TinyModelSpec, build_tiny_model

    assert base_model_id(tiny_model_dir) == base_model_id(tiny_model_dir)
    other = build_tiny_model(tmp_path / "other", TinyModelSpec(seed=1))
    assert base_model_id(other) != base_model_id(tiny_model_dir)


_MALLOC_PROBE = """
import ctypes
from rlfleet.malloc import keep_freed_buffers

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
size = 8 * 2**20
ok = keep_freed_buffers(largest_buffer=2**20)
mmapped = libc.mallinfo2().hblkhd
buffer = bytearray(size)
own_mapping = libc.mallinfo2().hblkhd - mmapped
del buffer
ok = ok and keep_freed_buffers(largest_buffer=16 * 2**20, keep_bytes=64 * 2**20)
mmapped = libc.mallinfo2().hblkhd
buffer = bytearray(size)
heap_mapping = libc.mallinfo2().hblkhd - mmapped
del buffer
print(ok, own_mapping, heap_mapping, libc.mallinfo2().fordblks)
"""


def test_malloc_settings_serve_big_buffers_from_the_heap_and_keep_them_when_freed():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    # A fresh process: this one's heap may already hold a free chunk big enough for any request.
    out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE], capture_output=True, text=True, check=True)
    ok, own_mapping, heap_mapping, free_in_heap = out.stdout.split()
    size = 8 * 2**20
    assert ok == "True"
    assert int(own_mapping) >= size     # above a 1 MiB threshold: the buffer gets a mapping of its own
    assert int(heap_mapping) == 0       # below 16 MiB: from the heap...
    assert int(free_in_heap) >= size    # ...and it stays the process's once freed
