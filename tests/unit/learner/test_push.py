"""Adapter serialisation and the concurrent push over loopback gRPC: catch-up to the newest version, dead generators.

DNS fan-out of push targets is the clients' resolver: tests/unit/test_clients.py.
"""

from __future__ import annotations

import asyncio
import json

import safetensors.torch
import torch

from learner.config import PushSettings
from learner.push import AdapterPusher, serialise_adapter
from rlfleet.adapters import AdapterAssembler
from rlfleet.config import ClientConfig, ServerConfig
from rlfleet.server import GrpcServer
from rlfleet.v1 import generator_pb2, generator_pb2_grpc
from tests.conftest import free_port


def test_serialised_adapter_round_trips_tensors_and_config():
    tensors = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.arange(6.0).reshape(2, 3)}
    payload = serialise_adapter(json.dumps({"peft_type": "LORA", "r": 2}), tensors, policy_version=7,
                                base_model_id="abc")
    assert payload.policy_version == 7 and payload.config["r"] == 2
    back = safetensors.torch.load(payload.weights)
    torch.testing.assert_close(back["base_model.model.layers.0.q_proj.lora_A.weight"], tensors[
        "base_model.model.layers.0.q_proj.lora_A.weight"], rtol=0, atol=0)


class SlowSink(generator_pb2_grpc.GeneratorServiceServicer):
    """A LoadAdapter endpoint that takes 0.3 s per adapter and records the versions it received."""

    def __init__(self):
        self.versions: list[int] = []

    async def LoadAdapter(self, request_iterator, context):
        assembler = AdapterAssembler()
        async for chunk in request_iterator:
            assembler.add(chunk)
        await asyncio.sleep(0.3)
        self.versions.append(assembler.finish().policy_version)
        return generator_pb2.LoadAdapterResponse(policy_version=self.versions[-1])


def _payload(version: int):
    tensors = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.full((2, 3), float(version))}
    return serialise_adapter(json.dumps({"peft_type": "LORA", "r": 2}), tensors, version, "abc")


def test_a_busy_generator_skips_to_the_newest_version_and_a_dead_one_blocks_nothing():
    async def run():
        server = GrpcServer(ServerConfig(host="127.0.0.1", port=0), name="sink")
        sink = SlowSink()
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(sink, server.grpc)
        port = await server.start(["rlfleet.v1.GeneratorService"])
        live, dead = f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"
        pusher = AdapterPusher([live, dead], PushSettings(timeout_seconds=5), ClientConfig(max_attempts=1))
        first = asyncio.ensure_future(pusher.push(_payload(1)))
        await asyncio.sleep(0.1)  # v1 is in flight to the live sink
        await pusher.push(_payload(2))  # live is busy: deferred; dead fails at once
        await pusher.push(_payload(3))
        outcomes = await first
        await pusher.drain(10)
        await pusher.close()
        await server.stop(0)
        return sink.versions, pusher.acked, outcomes

    versions, acked, outcomes = asyncio.run(run())
    assert versions == [1, 3]  # v2 was superseded while v1 was loading
    assert len(acked) == 1 and list(acked.values()) == [3]  # only the live generator acknowledged
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == 1 and failed[0].policy_version == 1
