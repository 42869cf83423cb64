"""Hostile rollout batches against a real learner over loopback gRPC: each refused naming the field, training goes on.

Every batch below used to be accepted, and the next training step crashed the learner (exit 1):
token ids outside the vocabulary, NaN log-probs or advantages, an absurd policy_version, a prompt +
completion longer than the model. Now each is INVALID_ARGUMENT naming the group and field, and the
learner trains the good batches that follow.
"""

from __future__ import annotations

import asyncio
import math
import os
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from learner.config import LearnerConfig
from learner.server import LearnerServer
from rlfleet.rollouts import batch_to_proto
from rlfleet.v1 import common_pb2, learner_pb2, learner_pb2_grpc
from tests.unit.learner.rollout_fixtures import fixed_batch

pytestmark = pytest.mark.slow
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".venv" / "torch_extensions"))

# The tiny model: 262 byte-level tokens, 1024 positions.
VOCAB, MAX_LEN = 262, 1024


def _spoiled(batch_id: str, spoil) -> common_pb2.RolloutBatch:
    pb = batch_to_proto(fixed_batch(batch_id, seed=3))
    spoil(pb)
    return pb


def _over_length(pb: common_pb2.RolloutBatch) -> None:
    sample = pb.groups[1].samples[0]
    del sample.completion.token_ids[:], sample.completion.logprobs[:]
    sample.completion.token_ids.extend([65] * MAX_LEN)
    sample.completion.logprobs.extend([-1.0] * MAX_LEN)


def _with_advantages(pb: common_pb2.RolloutBatch, bad_at: int) -> None:
    for group in pb.groups:
        for sample in group.samples:
            sample.advantages.extend([0.5] * len(sample.completion.token_ids))
    pb.groups[1].samples[2].advantages[bad_at] = math.nan


HOSTILE = {
    "out-of-vocabulary token": (lambda pb: pb.groups[0].samples[1].completion.token_ids.__setitem__(2, VOCAB),
                                "groups[0].samples[1].completion.token_ids[2]: token id 262 is outside"),
    "out-of-vocabulary prompt": (lambda pb: pb.groups[1].prompt_ids.append(10**6), "groups[1].prompt_ids["),
    "NaN logprob": (lambda pb: pb.groups[1].samples[3].completion.logprobs.__setitem__(0, math.nan),
                    "groups[1].samples[3].completion.logprobs[0]: must be finite"),
    "NaN advantage": (lambda pb: _with_advantages(pb, 1), "groups[1].samples[2].advantages[1]: must be finite"),
    "absurd policy_version": (lambda pb: setattr(pb.groups[0], "policy_version", 2**64 - 1),
                              "groups[0].policy_version: 18446744073709551615 is not a version"),
    "future policy_version": (lambda pb: setattr(pb.groups[1], "policy_version", 1),
                              "groups[1].policy_version: 1 is not a version"),
    "over-length": (_over_length, "groups[1].samples[0].completion.token_ids: prompt + completion is"),
}


async def _push(stub, batches: list[common_pb2.RolloutBatch]):
    return await stub.PushRollouts(iter(batches), timeout=60)


async def _wait_for_step(stub, step: int, timeout: float = 180.0) -> learner_pb2.LearnerStatus:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=10)
        if status.step >= step or status.state == "failed" or asyncio.get_running_loop().time() > deadline:
            return status
        await asyncio.sleep(0.2)


def test_hostile_batches_are_refused_by_name_and_the_learner_trains_on(tiny_model_dir, tmp_path):
    async def run():
        config = LearnerConfig.model_validate(dict(
            model=tiny_model_dir, run_dir=tmp_path / "run", max_steps=2, micro_batch_tokens=64,
            lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}, deepspeed={"zero_stage": 2},
            source={"type": "push", "max_queued_batches": 4}, generators=[],
            server={"host": "127.0.0.1", "port": 0, "metrics_port": 0}))
        server = LearnerServer(config)
        port = await server.start()
        training = asyncio.ensure_future(server.run())
        refused = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = learner_pb2_grpc.LearnerServiceStub(channel)
            for name, (spoil, _) in HOSTILE.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _push(stub, [_spoiled(name, spoil)])
                refused[name] = (err.value.code(), err.value.details())
            first = await _push(stub, [batch_to_proto(fixed_batch("good-1", seed=1))])
            after_first = await _wait_for_step(stub, 1)
            header = (await stub.GetPolicy(learner_pb2.GetPolicyRequest(), timeout=30).read()).header
            # a producer on version 1 now: the same group that was "from the future" is accepted
            second = await _push(stub, [batch_to_proto(fixed_batch("good-2", seed=2, policy_version=1))])
            code = await training
        metrics_text = await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{server.grpc.metrics_port}/metrics", timeout=5).read().decode())
        return refused, first, after_first, second, code, server.loop.status, header, metrics_text

    refused, first, after_first, second, code, final, header, metrics_text = asyncio.run(run())
    for name, (_, text) in HOSTILE.items():
        assert refused[name][0] == grpc.StatusCode.INVALID_ARGUMENT, (name, refused[name])
        assert refused[name][1].startswith(text), (name, refused[name][1])
    assert first.accepted_batches == 1 and second.accepted_batches == 1
    assert after_first.state != "failed" and after_first.step >= 1
    assert code == 0 and final.state == "finished" and final.step == 2
    # the adapter it serves carries this learner process's run identity
    assert header.policy_version == 1 and header.run_id == final.run_id and len(final.run_id) > 8
    families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
    outcomes = {s.labels["outcome"]: s.value for s in families["rlfleet_learner_received_batches"].samples
                if s.name.endswith("_total")}
    assert outcomes["invalid"] == len(HOSTILE) and outcomes["accepted"] == 2
