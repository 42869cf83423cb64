"""Policy versions (which adapters serve, which may be unloaded) and adapter-vs-model checks, by hand."""

from __future__ import annotations

import json
import struct

import pytest

from generator.policy import BaseModelShapes, PolicyVersions, check_adapter
from rlfleet.adapters import AdapterPayload
from rlfleet.errors import NotFound, Rejected

Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.0.self_attn.v_proj"
SHAPES = BaseModelShapes({Q: (256, 256), V: (128, 256), "model.layers.0.mlp.down_proj": (256, 688)})


def _safetensors(shapes: dict[str, list[int]]) -> bytes:
    """A safetensors file of float32 zeros with the given tensor shapes."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def _adapter(rank: int = 8, targets=("q_proj", "v_proj"), tensors: dict | None = None, base: str = "base") -> AdapterPayload:
    # PEFT shapes: lora_A is [r, in_features], lora_B is [out_features, r].
    tensors = tensors or {f"base_model.model.{Q}.lora_A.weight": [rank, 256], f"base_model.model.{Q}.lora_B.weight": [256, rank],
                          f"base_model.model.{V}.lora_A.weight": [rank, 256], f"base_model.model.{V}.lora_B.weight": [128, rank]}
    config = json.dumps({"peft_type": "LORA", "r": rank, "target_modules": list(targets)})
    return AdapterPayload(1, base, config, _safetensors(tensors))


def test_a_matching_adapter_passes():
    check_adapter(_adapter(), "base", SHAPES, max_rank=8)


@pytest.mark.parametrize(("payload", "message"), [
    (_adapter(base="other"), "header.base_model_id"),
    (_adapter(rank=16), "rank 16 is outside [1, 8]"),
    (_adapter(targets=("q_proj", "qkv_proj")), "['qkv_proj'] not among"),
    # q_proj is 256 x 256, so lora_B must be [256, 8]; [128, 8] is v_proj's shape.
    (_adapter(tensors={f"base_model.model.{Q}.lora_B.weight": [128, 8]}), "shape [128, 8], expected [256, 8]"),
    (_adapter(tensors={f"base_model.model.{Q}.weight": [256, 256]}), "not a LoRA A/B tensor"),
    # down_proj exists in the model but the config does not target it.
    (_adapter(tensors={"base_model.model.model.layers.0.mlp.down_proj.lora_A.weight": [8, 688]}), "not a targeted"),
    (_adapter(tensors={"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight": [8, 256]}), "not a targeted"),
])
def test_mismatched_adapters_are_rejected_with_the_reason(payload, message):
    with pytest.raises(Rejected, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_adapter(payload, "base", SHAPES, max_rank=8)


def test_shapes_are_read_from_the_tiny_model_headers(tiny_model_dir):
    shapes = BaseModelShapes.from_dir(tiny_model_dir)
    # hidden 256; 4 kv heads x head_dim 32 = 128 outputs for k/v; intermediate 688.
    assert shapes.linear["model.layers.3.self_attn.q_proj"] == (256, 256)
    assert shapes.linear["model.layers.0.self_attn.v_proj"] == (128, 256)
    assert shapes.linear["model.layers.0.mlp.down_proj"] == (256, 688)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= shapes.module_kinds


def _add(versions: PolicyVersions, version: int, run_id: str = "run-1") -> list[int]:
    return versions.add(versions.new_entry(run_id, version, checksum=f"sum{version}", base_model_id="base"))


def _versions(entries) -> list[int]:
    return [e.version for e in entries]


def test_versions_keep_k_newest_servable_and_unload_only_unused_ones():
    versions = PolicyVersions(keep_versions=2)
    base = versions.acquire(None)
    assert base.version == 0 and base.adapter_id == 0  # nothing loaded: the base model
    versions.release(base)
    for v in (1, 2, 3):
        _add(versions, v)
    # loaded [1, 2, 3], K = 2 -> servable [2, 3]; 1 is unused -> retirable
    assert versions.servable == [2, 3] and _versions(versions.retirable()) == [1]
    versions.remove(versions.retirable()[0])
    assert versions.acquire(None).version == 3
    pinned = versions.acquire(2)  # a request pinned to v2
    assert pinned.version == 2
    assert versions.acquire(0).version == 0  # the base model is always servable
    with pytest.raises(NotFound, match="policy_version: 1"):
        versions.acquire(1)
    _add(versions, 4)
    # loaded [2, 3, 4] -> servable [3, 4]; 2 is outside but in use, so nothing may be unloaded yet
    assert versions.retirable() == [] and versions.in_use(2) == 1
    versions.release(pinned)
    assert _versions(versions.retirable()) == [2]
    with pytest.raises(ValueError, match="not newer"):
        _add(versions, 4)


def test_a_new_learner_run_replaces_the_old_runs_versions_whatever_their_numbers():
    versions = PolicyVersions(keep_versions=2)
    for v in (4, 5):
        _add(versions, v, "run-1")
    pinned = versions.acquire(5)   # a request still generating on run-1's v5
    # run-2 resumed from a checkpoint of step 3: its v4 is other weights than run-1's v4
    assert _add(versions, 4, "run-2") == [4, 5]
    assert versions.run_id == "run-2" and versions.loaded == [4] and versions.newest == 4
    with pytest.raises(NotFound):
        versions.acquire(5)   # run-1's v5 serves no new request...
    assert _versions(versions.retirable()) == [4]   # ...run-1's v4 can go at once (unused)...
    versions.release(pinned)
    retirable = versions.retirable()
    assert [(e.run_id, e.version) for e in retirable] == [("run-1", 4), ("run-1", 5)]   # ...v5 once its request ended
    ids = {e.adapter_id for e in retirable} | {versions.find("run-2", 4).adapter_id}
    assert len(ids) == 3   # two v4s under distinct engine ids
    assert versions.find("run-1", 4) is None and versions.find("run-2", 4).checksum == "sum4"
