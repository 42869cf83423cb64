"""The learner service over real loopback gRPC: PushRollouts -> DeepSpeed steps -> adapter pushed to generators."""

from __future__ import annotations

import asyncio
import json
import math
import os
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from learner.config import LearnerConfig
from learner.server import LearnerServer
from rlfleet.adapters import ReceivedAdapter, receive_adapter, write_adapter_dir
from rlfleet.clients import LearnerClient, LearnerStatus
from rlfleet.config import ServerConfig
from rlfleet.server import GrpcServer
from rlfleet.v1 import generator_pb2, generator_pb2_grpc
from tests.conftest import free_port
from tests.unit.learner.rollout_fixtures import fixed_batch

pytestmark = pytest.mark.slow
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".venv" / "torch_extensions"))


class AdapterSink(generator_pb2_grpc.GeneratorServiceServicer):
    """In-test LoadAdapter endpoint: verifies the stream like a generator and keeps every adapter it accepted.

    Stands in for `generator/` (vLLM) only as the receiving end of the push; the adapter it keeps is
    loaded with PEFT in the test, which is what a generator's engine does with it.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.versions: list[int] = []

    async def LoadAdapter(self, request_iterator, context):
        async with receive_adapter(request_iterator, spool_dir=None) as received:
            payload = received.payload
        write_adapter_dir(payload, self.folder / f"v{payload.policy_version}")
        self.versions.append(payload.policy_version)
        return generator_pb2.LoadAdapterResponse(policy_version=payload.policy_version,
                                                 loaded_versions=self.versions)


async def _wait_for_step(learner: LearnerClient, step: int, timeout: float = 120.0) -> LearnerStatus:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await learner.status()
        if status.step >= step or asyncio.get_running_loop().time() > deadline:
            return status
        await asyncio.sleep(0.2)


def test_push_rollouts_train_and_push_adapters(tiny_model_dir, tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: pushes there fail without blocking anything

    async def run():
        sink_server = GrpcServer(ServerConfig(host="127.0.0.1", port=0), name="sink")
        sink = AdapterSink(tmp_path / "received")
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(sink, sink_server.grpc)
        sink_port = await sink_server.start(["rlfleet.v1.GeneratorService"])
        config = LearnerConfig.model_validate(dict(
            model=tiny_model_dir, run_dir=tmp_path / "run", max_steps=3, micro_batch_tokens=64,
            lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}, deepspeed={"zero_stage": 2},
            source={"type": "push", "max_queued_batches": 2}, checkpoint={"every_steps": 1},
            generators=[f"127.0.0.1:{sink_port}", dead], push={"timeout_seconds": 5},
            server={"host": "127.0.0.1", "port": 0, "metrics_port": 0}, client={"max_attempts": 1}))
        server = LearnerServer(config)
        port = await server.start()
        training = asyncio.ensure_future(server.run())
        async def keep(received: ReceivedAdapter):
            return received.payload

        async with LearnerClient(f"127.0.0.1:{port}") as learner:
            before = await learner.pull_policy(keep)
            batches = [fixed_batch(f"b{i}", seed=i) for i in range(2)]
            first = await learner.push_rollouts([batches[0], batches[0], batches[1]])
            status = await _wait_for_step(learner, 2)
            pulled = await learner.pull_policy(keep, newer_than=1)
            await learner.push_rollouts([fixed_batch("b2", seed=2, policy_version=1)])
            code = await training
            metrics_text = await asyncio.to_thread(lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{server.grpc.metrics_port}/metrics", timeout=5).read().decode())
        await sink_server.stop(0)
        return before, first, status, pulled, code, sink.versions, metrics_text, server.loop.status

    before, first, status, pulled, code, versions, metrics_text, final = asyncio.run(run())
    assert before is None  # NOT_FOUND: no adapter before the first step
    assert (first.accepted_batches, first.duplicate_batches) == (2, 1)
    assert status.step >= 2 and status.policy_version >= 2
    assert pulled.policy_version >= 2
    assert code == 0 and final.state == "finished" and final.step == 3
    assert versions == [1, 2, 3]  # every version reached the live generator, in order, despite the dead one
    assert status.generator_versions[list(status.generator_versions)[0]] >= 1
    assert all(v >= 1 for v in status.generator_versions.values())
    # the pushed adapter is a PEFT folder that PEFT loads onto the base model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "received" / "v3")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)
    final_adapter = tmp_path / "run" / "adapter" / "adapter_model.safetensors"
    assert final_adapter.read_bytes() == (tmp_path / "received" / "v3" / "adapter_model.safetensors").read_bytes()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
    assert families["rlfleet_learner_steps"].samples[0].value >= 3
    outcomes = {s.labels["outcome"]: s.value for s in families["rlfleet_learner_pushes"].samples
                if s.name.endswith("_total")}
    assert outcomes["ok"] >= 3 and outcomes["failed"] >= 1
    record = json.loads(lines[-1])
    assert record["step"] == 3 and record["policy_version"] == 3 and math.isfinite(record["loss"])
    for key in ("wait_seconds", "forward_backward_seconds", "optimizer_seconds", "push_seconds", "grad_norm",
                "kl", "entropy", "clip_frac_low", "clip_frac_high", "reward_mean", "advantage_std",
                "response_length_mean", "tokens_per_second", "staleness_max", "reward_component_mean/correct"):
        assert key in record, key
    assert record["staleness_max"] == 1  # b2 was generated by version 1, step 3 trains version 2: lag 1
