"""Readiness is one switch for all four services: health NOT_SERVING and calls UNAVAILABLE until set_ready.

Each service's own start-up is paused at its loading step (the model, the learner's pull, the
engine), so the test sees the state a client sees while it loads, then again once it is ready.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlfleet.adapters.payload import AdapterPayload
from rlfleet.adapters.wire import to_chunks
from rlfleet.config import ServerConfig
from rlfleet.server import GrpcServer
from rlfleet.v1 import (
    common_pb2,
    generator_pb2,
    generator_pb2_grpc,
    learner_pb2,
    learner_pb2_grpc,
    reference_pb2,
    reference_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
)
from tests.conftest import free_port

NOT_SERVING, SERVING = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING


def _server_config() -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=free_port(), grace_seconds=0)


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


async def _wait_listening(channel: grpc.aio.Channel, starting: asyncio.Future, limit: float = 120) -> None:
    """Returns once the server answers health at all (it binds before it loads)."""
    for _ in range(int(limit / 0.05)):
        if starting.done():
            starting.result()  # re-raises a start-up failure
        try:
            await _health(channel)
            return
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.05)
    raise TimeoutError("the server never listened")


async def _refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


async def _before_and_after(starting: asyncio.Future, port: int, release: threading.Event, call):
    """(health, refusal code, refusal message) while start-up is held at its loading step, then
    (health, `call`'s answer) once health says SERVING. `call(channel)` makes one unary call."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await _wait_listening(channel, starting)
        before = (await _health(channel), *await _refused(call(channel)))
        release.set()
        while await _health(channel) != SERVING:
            if starting.done():
                starting.result()  # re-raises a start-up failure
            await asyncio.sleep(0.05)
        after = (await _health(channel), await call(channel))
    return before, after


class _Pause:
    """Holds a loading step (in a worker thread) until the test releases it."""

    def __init__(self, step=None):
        self.step, self.released = step, threading.Event()

    def __call__(self, *args, **kwargs):
        assert self.released.wait(120), "the test never released the loading step"
        return self.step(*args, **kwargs) if self.step is not None else None


def _chunks() -> list[common_pb2.AdapterChunk]:
    """A 300,000-byte adapter in 10,000-byte slices: the header + 30 data chunks."""
    return list(to_chunks(AdapterPayload(1, "base", json.dumps({"peft_type": "LORA", "r": 1}), bytes(300_000)),
                          chunk_bytes=10_000))


class _CountingGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    """A GeneratorService whose LoadAdapter counts the chunks it read (raw bytes, as the generator's)."""

    def __init__(self):
        self.chunks = 0

    async def LoadAdapter(self, request_iterator, context):
        async for _ in request_iterator:
            self.chunks += 1
        return generator_pb2.LoadAdapterResponse(policy_version=1)


def test_the_gate_refuses_a_registered_service_until_ready_and_again_after_set_not_ready():
    async def run():
        server = GrpcServer(_server_config(), name="sink")
        servicer = _CountingGenerator()
        server.add_servicer(generator_pb2_grpc.add_GeneratorServiceServicer_to_server, servicer,
                            raw_requests=["LoadAdapter"])
        await server.start(["rlfleet.v1.GeneratorService"])
        seen = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)

            def push():
                return stub.LoadAdapter(iter(_chunks()), timeout=10)
            seen["before"] = (await _health(channel, "rlfleet.v1.GeneratorService"), *await _refused(push()),
                              servicer.chunks, server.ready)
            await server.set_ready()
            seen["ready"] = (await _health(channel), (await push()).policy_version, servicer.chunks, server.ready)
            await server.set_not_ready()
            seen["not ready"] = (await _health(channel), (await _refused(push()))[0], servicer.chunks)
        await server.stop(0)
        return seen

    seen = asyncio.run(run())
    # the refused streams were read to their end by the gate (the client saw a clean UNAVAILABLE),
    # never by the servicer: it read only the accepted one, 1 header + 30 data chunks
    assert seen["before"][:2] == (NOT_SERVING, grpc.StatusCode.UNAVAILABLE)
    assert seen["before"][2].startswith("sink is still loading")
    assert seen["before"][3:] == (0, False)
    assert seen["ready"] == (SERVING, 1, 31, True)
    assert seen["not ready"] == (NOT_SERVING, grpc.StatusCode.UNAVAILABLE, 31)


def test_reward_server_is_unavailable_until_its_model_step_finished(tmp_path):
    from reward_server.config import RewardConfig
    from reward_server.core import RewardCore
    from reward_server.server import start_server

    script = tmp_path / "r.py"
    script.write_text("def one(prompt, completion, **c):\n    return 1.0\n")
    config = RewardConfig(script=script, workers=1, server=_server_config())
    core = RewardCore(config)
    core.start_workers()
    core.load_model = pause = _Pause(core.load_model)

    async def names(channel):
        reply = await reward_pb2_grpc.RewardServiceStub(channel).ListRewards(reward_pb2.ListRewardsRequest())
        return [r.name for r in reply.rewards]

    async def run():
        starting = asyncio.ensure_future(start_server(config.server, core))
        seen = await _before_and_after(starting, config.server.port, pause.released, names)
        await (await starting).stop(0)
        return seen

    try:
        before, after = asyncio.run(run())
    finally:
        core.close()
    assert before[:2] == (NOT_SERVING, grpc.StatusCode.UNAVAILABLE) and before[2].startswith("reward is still loading")
    assert after == (SERVING, ["one"])


def test_reference_is_unavailable_until_its_model_loaded(tiny_model_dir, monkeypatch):
    import reference.server
    from reference.config import ReferenceConfig

    pause = _Pause(reference.server.load_reference_model)
    monkeypatch.setattr(reference.server, "load_reference_model", pause)
    config = ReferenceConfig(model=tiny_model_dir, server=_server_config())

    async def model(channel):
        stub = reference_pb2_grpc.ReferenceServiceStub(channel)
        return (await stub.GetInfo(reference_pb2.GetReferenceInfoRequest())).model

    async def run():
        starting = asyncio.ensure_future(reference.server.start_reference_server(config))
        seen = await _before_and_after(starting, config.server.port, pause.released, model)
        await (await starting).stop(0)
        return seen

    before, after = asyncio.run(run())
    assert before[:2] == (NOT_SERVING, grpc.StatusCode.UNAVAILABLE)
    assert before[2].startswith("reference is still loading")
    assert after == (SERVING, tiny_model_dir)


class _HeldLearner(learner_pb2_grpc.LearnerServiceServicer):
    """Stands in for the learner a generator pulls from: GetPolicy waits for the test, then has no adapter."""

    def __init__(self):
        self.released = threading.Event()

    def GetPolicy(self, request, context):
        self.released.wait(60)
        context.abort(grpc.StatusCode.NOT_FOUND, "no adapter version yet")
        yield from ()  # a response stream, like the learner's


def test_generator_is_unavailable_until_its_policy_pull_finished(tiny_model_dir, tmp_path):
    from generator.config import GeneratorConfig
    from generator.server import serve

    learner = _HeldLearner()
    learner_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    learner_pb2_grpc.add_LearnerServiceServicer_to_server(learner, learner_server)
    learner_port = learner_server.add_insecure_port("127.0.0.1:0")
    learner_server.start()
    config = GeneratorConfig(model=tiny_model_dir, engine="transformers-fake", max_model_len=64, max_lora_rank=8,
                             adapter_dir=tmp_path / "served", server=_server_config(),
                             learner_address=f"127.0.0.1:{learner_port}", learner_client={"timeout_seconds": 60})

    async def version(channel):
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        return (await stub.GetInfo(generator_pb2.GetGeneratorInfoRequest())).policy_version

    async def run():
        serving = asyncio.ensure_future(serve(config))  # runs until cancelled
        seen = await _before_and_after(serving, config.server.port, learner.released, version)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        return seen

    try:
        before, after = asyncio.run(run())
    finally:
        learner.released.set()
        learner_server.stop(0)
    assert before[:2] == (NOT_SERVING, grpc.StatusCode.UNAVAILABLE)
    assert before[2].startswith("generator is still loading")
    assert after == (SERVING, 0)   # the learner had no adapter: the base model


@pytest.mark.slow
def test_learner_is_unavailable_until_its_engine_is_built(tiny_model_dir, tmp_path, monkeypatch):
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".venv" / "torch_extensions"))
    import learner.server
    from learner.config import LearnerConfig

    pause = _Pause(learner.server.PolicyEngine)
    monkeypatch.setattr(learner.server, "PolicyEngine", pause)
    config = LearnerConfig.model_validate(dict(
        model=tiny_model_dir, run_dir=tmp_path / "run", max_steps=1, micro_batch_tokens=64,
        lora={"r": 4, "target_modules": ["q_proj"]}, deepspeed={"zero_stage": 2}, source={"type": "push"},
        server=_server_config(), client={"max_attempts": 1}))

    async def step(channel):
        return (await learner_pb2_grpc.LearnerServiceStub(channel).GetStatus(learner_pb2.GetStatusRequest())).step

    async def run():
        server = learner.server.LearnerServer(config)  # its aio server belongs to this event loop
        seen = await _before_and_after(asyncio.ensure_future(server.start()), config.server.port, pause.released, step)
        await server.pusher.close()
        await server.grpc.stop(0)
        return seen

    before, after = asyncio.run(run())
    assert before[:2] == (NOT_SERVING, grpc.StatusCode.UNAVAILABLE)
    assert before[2].startswith("learner is still loading")
    assert after == (SERVING, 0)
