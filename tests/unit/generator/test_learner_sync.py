"""Start-up policy pull against a stand-in learner: adapter, corrupt adapter, NOT_FOUND (base model), unreachable."""

from __future__ import annotations

import asyncio
import time
from concurrent import futures

import grpc
import pytest

from generator.config import GeneratorConfig
from generator.core import Generator
from generator.learner_sync import pull_current_policy
from rlfleet.adapters.identity import base_model_id
from rlfleet.adapters.payload import AdapterPayload, adapter_from_dir
from rlfleet.adapters.wire import to_chunks
from rlfleet.config import ClientConfig
from rlfleet.errors import InvalidRequest, NotReady
from rlfleet.v1 import learner_pb2_grpc
from tests.conftest import free_port


class StandInLearner(learner_pb2_grpc.LearnerServiceServicer):
    """The learner's GetPolicy only: streams `payload`, or answers NOT_FOUND when there is none."""

    def __init__(self, payload: AdapterPayload | None, xxh3_128: str | None = None):
        self.payload, self.xxh3_128 = payload, xxh3_128

    def GetPolicy(self, request, context):
        if self.payload is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no adapter version yet")
        chunks = to_chunks(self.payload, chunk_bytes=10_000)
        header = next(chunks)
        if self.xxh3_128 is not None:
            header.header.xxh3_128 = self.xxh3_128
        yield header
        yield from chunks


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> AdapterPayload:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj"])).save_pretrained(out)
    return adapter_from_dir(out, 5, base_model_id(tiny_model_dir))


def _pull(model: str, tmp_path, target: str, wait: float) -> tuple[int, Generator]:
    async def run():
        core = await Generator.create(GeneratorConfig(model=model, engine="transformers-fake", max_model_len=64,
                                                      max_lora_rank=8, adapter_dir=tmp_path / "served"))
        client = ClientConfig(timeout_seconds=1, max_attempts=1)
        return await pull_current_policy(core, target, client, wait_seconds=wait), core
    return asyncio.run(run())


def _serve(learner: StandInLearner) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    learner_pb2_grpc.add_LearnerServiceServicer_to_server(learner, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_pulls_and_serves_the_learners_adapter(tiny_model_dir, tmp_path, adapter):
    server, target = _serve(StandInLearner(adapter))
    try:
        version, core = _pull(tiny_model_dir, tmp_path, target, wait=10)
    finally:
        server.stop(0)
    assert version == 5
    assert core.info().policy_version == 5 and core.info().loaded_versions == [5]


def test_a_corrupt_adapter_is_refused_by_the_same_reader_as_a_push(tiny_model_dir, tmp_path, adapter):
    # The message is receive_adapter's, as LoadAdapter's is (tests/unit/test_adapters.py, tests/service/test_generator.py)
    server, target = _serve(StandInLearner(adapter, xxh3_128="0" * 32))
    try:
        with pytest.raises(InvalidRequest, match="checksum mismatch"):
            _pull(tiny_model_dir, tmp_path, target, wait=10)
    finally:
        server.stop(0)
    assert list((tmp_path / "served" / ".incoming").iterdir()) == []   # the staged file was dropped


def test_a_learner_without_adapters_means_the_base_model(tiny_model_dir, tmp_path):
    server, target = _serve(StandInLearner(None))
    try:
        version, core = _pull(tiny_model_dir, tmp_path, target, wait=10)
    finally:
        server.stop(0)
    assert version == 0 and core.info().loaded_versions == []


def test_an_unreachable_learner_fails_start_up_after_the_wait(tiny_model_dir, tmp_path):
    start = time.monotonic()
    with pytest.raises(NotReady, match="GetPolicy failed"):
        _pull(tiny_model_dir, tmp_path, f"127.0.0.1:{free_port()}", wait=1.5)
    # attempts of <= 1 s each with 0.25, 0.5, ... s pauses stop once the 1.5 s wait is spent:
    # ~2.5 s at most, plus the fake engine's start; 10 s means it did not retry for ever
    assert time.monotonic() - start < 10
