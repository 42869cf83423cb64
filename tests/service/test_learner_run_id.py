"""A learner's run identity over real gRPC: every push carries it, and a resumed learner is a new run that pushes at once.

Why a resume is a new run (learner/loop.py): versions after the checkpoint may already have reached
generators with weights the resumed learner will not reproduce, so the same number must not be
taken for the same adapter. Pushing the resumed adapter at start makes generators drop the old
run's versions before any rollout is generated on them.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from learner.config import LearnerConfig
from learner.server import LearnerServer
from rlfleet.adapters import receive_adapter
from rlfleet.config import ServerConfig
from rlfleet.rollouts import batch_to_proto
from rlfleet.server import GrpcServer
from rlfleet.v1 import generator_pb2, generator_pb2_grpc, learner_pb2_grpc
from tests.unit.learner.rollout_fixtures import fixed_batch

pytestmark = pytest.mark.slow
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".venv" / "torch_extensions"))


class PushLog(generator_pb2_grpc.GeneratorServiceServicer):
    """The receiving end of the learner's pushes (not under test): (version, run_id, checksum) of each."""

    def __init__(self):
        self.pushes: list[tuple[int, str, str]] = []

    async def LoadAdapter(self, request_iterator, context):
        async with receive_adapter(request_iterator, spool_dir=None) as received:
            payload = received.payload
        self.pushes.append((payload.policy_version, payload.run_id, payload.checksum))
        return generator_pb2.LoadAdapterResponse(policy_version=payload.policy_version)


async def _learner(config: LearnerConfig, batches: list) -> tuple[str, int]:
    """Runs one learner process's worth of training; returns its run_id and exit code."""
    server = LearnerServer(config)
    port = await server.start()
    training = asyncio.ensure_future(server.run())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = learner_pb2_grpc.LearnerServiceStub(channel)
        for _ in range(600):   # UNAVAILABLE while it loads its checkpoint: retried, as clients do
            try:
                await stub.PushRollouts(iter([batch_to_proto(b) for b in batches]), timeout=60)
                break
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.1)
        code = await training
    return server.loop.status.run_id, code


def test_a_resumed_learner_is_a_new_run_and_pushes_its_adapter_first(tiny_model_dir, tmp_path):
    async def run():
        sink = PushLog()
        sink_server = GrpcServer(ServerConfig(host="127.0.0.1", port=0), name="sink")
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(sink, sink_server.grpc)
        sink_port = await sink_server.start(["rlfleet.v1.GeneratorService"])
        base = dict(model=tiny_model_dir, run_dir=tmp_path / "run", micro_batch_tokens=64,
                    lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}, deepspeed={"zero_stage": 2},
                    source={"type": "push"}, checkpoint={"every_steps": 1}, generators=[f"127.0.0.1:{sink_port}"],
                    server={"host": "127.0.0.1", "port": 0, "metrics_port": 0})
        first = await _learner(LearnerConfig.model_validate({**base, "max_steps": 1}), [fixed_batch("a", seed=1)])
        pushed_by_first = len(sink.pushes)
        second = await _learner(LearnerConfig.model_validate({**base, "max_steps": 2, "checkpoint": {
            "every_steps": 1, "resume": True}}), [fixed_batch("b", seed=2, policy_version=1)])
        await sink_server.stop(0)
        return first, second, pushed_by_first, sink.pushes

    (run_a, code_a), (run_b, code_b), pushed_by_first, pushes = asyncio.run(run())
    assert code_a == code_b == 0 and run_a != run_b
    assert pushes[:pushed_by_first] == [pushes[0]] and pushes[0][:2] == (1, run_a)
    # the resumed learner's first push: its checkpoint's adapter (the same bytes) as v1 of the new run,
    # then v2 of the new run once it trained on "b"
    resumed, trained = pushes[pushed_by_first:]
    assert resumed == (1, run_b, pushes[0][2])
    assert trained[:2] == (2, run_b) and trained[2] != resumed[2]
