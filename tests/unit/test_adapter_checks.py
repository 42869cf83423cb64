"""What a received adapter must be: a well-formed safetensors file of finite floats and a sane LoRA config."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from rlfleet.adapters import AdapterAssembler, AdapterPayload, check_lora_config, check_weights, to_chunks
from rlfleet.errors import InvalidRequest


def _file(header, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _tensors(**arrays: np.ndarray) -> bytes:
    """A safetensors file of the given arrays (F32/F16/F64 from numpy; a uint16 array stands for BF16)."""
    names = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<f8"): "F64", np.dtype("<u2"): "BF16"}
    header, data = {}, b""
    for name, array in arrays.items():
        raw = array.tobytes()
        header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return _file(header, data)


def _field(call) -> str:
    with pytest.raises(InvalidRequest) as err:
        call()
    return err.value.field


@pytest.mark.parametrize(("header", "field"), [
    ([1, 2], "adapter_model.safetensors.header"),
    ({"w": [0, 4]}, "adapter_model.safetensors[w]"),
    ({"w": "F32"}, "adapter_model.safetensors[w]"),
    ({"__metadata__": [], "w": {}}, "adapter_model.safetensors[__metadata__]"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, "adapter_model.safetensors[w].shape"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, "adapter_model.safetensors[w].data_offsets"),
    ({"w": {"dtype": 3, "shape": [1], "data_offsets": [0, 4]}}, "adapter_model.safetensors[w].dtype"),
])
def test_a_malformed_header_names_the_entry(header, field):
    assert _field(lambda: check_weights(_file(header, bytes(4)))) == field


def test_tensor_bytes_must_match_the_shape_lie_inside_the_file_and_be_floats():
    data = bytes(8)
    short = {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}          # 3 x 4 bytes != 8
    outside = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}       # the file holds 8
    integers = {"w": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}
    assert _field(lambda: check_weights(_file(short, data))) == "adapter_model.safetensors[w].data_offsets"
    assert _field(lambda: check_weights(_file(outside, data))) == "adapter_model.safetensors[w].data_offsets"
    assert _field(lambda: check_weights(_file(integers, data))) == "adapter_model.safetensors[w].dtype"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", ["<f4", "<f2", "<f8"])
def test_one_non_finite_value_anywhere_is_refused_naming_the_tensor(tmp_path, bad, dtype):
    values = np.linspace(-1, 1, 1001).astype(dtype)
    values[777] = bad
    data = _tensors(a=np.ones(3, dtype), b=values)
    assert _field(lambda: check_weights(data)) == "adapter_model.safetensors[b]"
    (tmp_path / "w").write_bytes(data)
    assert _field(lambda: check_weights(tmp_path / "w")) == "adapter_model.safetensors[b]"


def test_bf16_is_checked_on_its_bits():
    # bfloat16 is the top half of a float32: 1.0 = 0x3F80, +inf = 0x7F80, NaN = 0x7FC0, -inf = 0xFF80.
    for bits in (0x7F80, 0x7FC0, 0xFF80):
        values = np.array([0x3F80, bits, 0x3F80], dtype="<u2")
        assert _field(lambda v=values: check_weights(_tensors(w=v))) == "adapter_model.safetensors[w]"
    # the largest finite bfloat16 (0x7F7F, ~3.39e38) and its negative pass
    assert set(check_weights(_tensors(w=np.array([0x3F80, 0x7F7F, 0xFF7F], dtype="<u2")))) == {"w"}


def test_huge_finite_values_whose_sum_overflows_pass():
    # 3e38 + 3e38 overflows float32 to inf: the fast sum says "not finite", the exact check clears it.
    assert set(check_weights(_tensors(w=np.full(4, 3e38, "<f4")))) == {"w"}


@pytest.mark.parametrize(("config", "field"), [
    ({"r": 8, "lora_alpha": float("nan")}, "header.adapter_config_json.lora_alpha"),
    ({"r": 8, "lora_alpha": float("inf")}, "header.adapter_config_json.lora_alpha"),
    ({"r": 8, "lora_alpha": "16"}, "header.adapter_config_json.lora_alpha"),
    ({"r": 8, "lora_alpha": True}, "header.adapter_config_json.lora_alpha"),
    ({"r": 1, "lora_alpha": 1025}, "header.adapter_config_json.lora_alpha"),       # scaling 1025 > 1024
    ({"r": 8, "lora_alpha": 16, "alpha_pattern": {"q_proj": float("nan")}},
     "header.adapter_config_json.alpha_pattern[q_proj]"),
    # rsLoRA divides by sqrt(r): 1100 / sqrt(1) > 1024; the smallest rank (rank_pattern's 1) counts
    ({"r": 64, "lora_alpha": 1100, "use_rslora": True, "rank_pattern": {"q_proj": 1}},
     "header.adapter_config_json.lora_alpha"),
    ({"r": 8, "use_rslora": "yes"}, "header.adapter_config_json.use_rslora"),
    ({"r": 0}, "header.adapter_config_json.r"),
    ({"r": 8, "rank_pattern": {"q_proj": 2.5}}, "header.adapter_config_json.rank_pattern[q_proj]"),
    ({"r": 8, "alpha_pattern": [1]}, "header.adapter_config_json.alpha_pattern"),
])
def test_lora_config_numbers_are_finite_and_bounded(config, field):
    assert _field(lambda: check_lora_config(config)) == field


def test_usual_lora_configs_pass():
    check_lora_config({"r": 8})                                          # PEFT's default alpha 8: scaling 1
    check_lora_config({"r": 1, "lora_alpha": 1024})                      # scaling exactly at the bound
    check_lora_config({"r": 16, "lora_alpha": 32, "use_rslora": True, "rank_pattern": {"v_proj": 4},
                       "alpha_pattern": {"v_proj": 8}})


def test_the_assembler_refuses_a_nan_alpha_at_the_header_and_nan_weights_at_the_end(tmp_path):
    weights = _tensors(w=np.array([1.0, np.nan], "<f4"))
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}
    chunks = list(to_chunks(AdapterPayload(2, "base", json.dumps({**config, "lora_alpha": float("nan")}), weights)))
    # json.dumps writes NaN as the bare literal `NaN`, which Python's json (and PEFT) reads back
    assert "NaN" in chunks[0].header.adapter_config_json
    with pytest.raises(InvalidRequest, match="header.adapter_config_json.lora_alpha"):
        AdapterAssembler().add(chunks[0])
    spooled = AdapterAssembler(spool_dir=tmp_path)
    for chunk in to_chunks(AdapterPayload(2, "base", json.dumps(config), weights, run_id="r1")):
        spooled.add(chunk)
    with pytest.raises(InvalidRequest, match=r"adapter_model.safetensors\[w\]: holds NaN or infinite values"):
        spooled.finish()
    assert list(tmp_path.iterdir()) == []   # the staged file is gone


def test_the_run_id_travels_with_the_adapter():
    payload = AdapterPayload(2, "base", json.dumps({"peft_type": "LORA", "r": 4}),
                             _tensors(w=np.ones(2, "<f4")), run_id="run-7")
    assembler = AdapterAssembler()
    for chunk in to_chunks(payload):
        assembler.add(chunk)
    assert assembler.finish() == payload
