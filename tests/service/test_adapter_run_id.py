"""An adapter pushed with an empty run_id never replaces a learner's run: the real generator server (fake engine) over loopback gRPC.

An empty run_id is proto3's default, i.e. what a hand push (bench/weight_push.py) or a client that
predates the field sends. It used to count as "another run": it took the generator over, and the
learner's next push was refused as coming from a replaced run, so training went on while every
rollout came from the hand-pushed weights.
"""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from rlfleet.adapters import AdapterPayload, adapter_from_dir, base_model_id
from rlfleet.clients import GeneratorClient
from rlfleet.config import ClientConfig, ServerConfig
from tests.conftest import free_port, random_lora_adapter


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> AdapterPayload:
    out = random_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"), seed=1, rank=4, alpha=8)
    return adapter_from_dir(out, 1, base_model_id(tiny_model_dir))


def _pushes(tiny_model_dir, tmp_path, pushes: list[tuple[str, int]], adapter: AdapterPayload):
    """Starts `rlfleet generator` (fake engine) in process, sends each (run_id, version) push in order;
    returns what each push got (the version it serves, or the status code and details) and the final GetInfo."""
    from generator.config import GeneratorConfig
    from generator.server import serve

    config = GeneratorConfig(model=tiny_model_dir, engine="transformers-fake", max_model_len=64, max_lora_rank=8,
                             adapter_dir=tmp_path / "served",
                             server=ServerConfig(host="127.0.0.1", port=free_port(), grace_seconds=0))

    async def run():
        serving = asyncio.ensure_future(serve(config))
        client = GeneratorClient(f"127.0.0.1:{config.server.port}", ClientConfig(timeout_seconds=30, max_attempts=1))
        try:
            for _ in range(600):
                if serving.done():
                    serving.result()
                if await client.serving(timeout=1):
                    break
                await asyncio.sleep(0.1)
            replies = []
            for run_id, version in pushes:
                payload = dataclasses.replace(adapter, policy_version=version, run_id=run_id)
                try:
                    replies.append((await client.load_adapter(payload, chunk_bytes=64 * 1024)).policy_version)
                except grpc.aio.AioRpcError as err:
                    replies.append((err.code(), err.details()))
            return replies, (await client.info()).policy_version
        finally:
            await client.close()
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    return asyncio.run(run())


def test_an_adapter_without_run_id_does_not_replace_the_learners_run(tiny_model_dir, tmp_path, adapter):
    replies, serving = _pushes(tiny_model_dir, tmp_path, [("run-1", 1), ("", 2), ("", 7), ("run-1", 2)], adapter)
    assert replies[0] == 1
    for code, details in replies[1:3]:
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.startswith("header.run_id: empty, and this generator serves learner run 'run-1'")
    # the learner's run still owns the generator: its next version is taken and served
    assert replies[3] == 2 and serving == 2


def test_an_adapter_without_run_id_serves_until_a_learner_run_arrives(tiny_model_dir, tmp_path, adapter):
    # hand pushes (no run) are a legitimate use while no learner pushes; the first learner run takes over
    replies, serving = _pushes(tiny_model_dir, tmp_path, [("", 1), ("", 2), ("run-1", 1), ("", 3)], adapter)
    assert replies[:3] == [1, 2, 1] and serving == 1
    assert replies[3][0] == grpc.StatusCode.FAILED_PRECONDITION and replies[3][1].startswith("header.run_id: empty")
