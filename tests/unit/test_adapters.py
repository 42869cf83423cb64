"""Adapter chunking: round trip, checksum/size/order errors, atomic folder, base-model identity."""

from __future__ import annotations

import json
import struct

import pytest

from rlfleet.adapters import (
    AdapterAssembler,
    AdapterPayload,
    adapter_from_dir,
    base_model_id,
    to_chunks,
    write_adapter_dir,
)
from rlfleet.errors import InvalidRequest
from rlfleet.v1 import common_pb2


def _payload(n: int = 5000) -> AdapterPayload:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n // 4], "data_offsets": [0, n // 4 * 4]}}).encode()
    weights = struct.pack("<Q", len(header)) + header + bytes(range(256)) * (n // 256) + b"x" * (n % 256)
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
    chunks[0].header.sha256 = "0" * 64
    assembler = AdapterAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    with pytest.raises(InvalidRequest, match="header.sha256"):
        assembler.finish()


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


def test_base_model_id_is_stable_and_tells_models_apart(tiny_model_dir, tmp_path):
    from rlfleet.tiny_model import TinyModelSpec, build_tiny_model

    assert base_model_id(tiny_model_dir) == base_model_id(tiny_model_dir)
    other = build_tiny_model(tmp_path / "other", TinyModelSpec(seed=1))
    assert base_model_id(other) != base_model_id(tiny_model_dir)
