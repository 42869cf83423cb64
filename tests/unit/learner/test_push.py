"""Push targets and adapter serialisation (no network): DNS fan-out and the safetensors payload."""

from __future__ import annotations

import json

import safetensors.torch
import torch

from learner.push import resolve_targets, serialise_adapter


def test_dns_target_expands_to_every_address_and_others_pass_through():
    targets = resolve_targets(["dns:///localhost:50051", "10.0.0.7:50051", "dns:///no-such-host.invalid:1"])
    assert "10.0.0.7:50051" in targets
    local = [t for t in targets if t != "10.0.0.7:50051"]
    assert local and all(t.endswith(":50051") for t in local)  # 127.0.0.1 and/or [::1], each separately
    assert all(t in ("127.0.0.1:50051", "[::1]:50051") for t in local)
    assert len(targets) == len(set(targets))  # an unresolvable name is skipped, not fatal


def test_serialised_adapter_round_trips_tensors_and_config():
    tensors = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.arange(6.0).reshape(2, 3)}
    payload = serialise_adapter(json.dumps({"peft_type": "LORA", "r": 2}), tensors, policy_version=7,
                                base_model_id="abc")
    assert payload.policy_version == 7 and payload.config["r"] == 2
    back = safetensors.torch.load(payload.weights)
    torch.testing.assert_close(back["base_model.model.layers.0.q_proj.lora_A.weight"], tensors[
        "base_model.model.layers.0.q_proj.lora_A.weight"], rtol=0, atol=0)
