"""GeneratorService over gRPC: protobuf <-> domain types around the core, nothing else."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

from generator.core import Generator
from generator.rollouts import Completion, GenerateBatch, GroupResult
from rlfleet.adapters.receive import receive_adapter
from rlfleet.generation import PromptInput, Sampling
from rlfleet.outcomes import finish_reason_to_proto
from rlfleet.v1 import common_pb2, generator_pb2, generator_pb2_grpc


def sampling_from_proto(msg: common_pb2.SamplingParams, default_max_tokens: int) -> Sampling:
    """Proto sampling parameters with the wire's defaults (0 / unset) filled in."""
    return Sampling(
        n=msg.n or 1, max_tokens=msg.max_tokens or default_max_tokens, temperature=msg.temperature,
        top_p=msg.top_p if msg.HasField("top_p") else 1.0, top_k=msg.top_k if msg.HasField("top_k") else 0,
        min_p=msg.min_p if msg.HasField("min_p") else 0.0, seed=msg.seed if msg.HasField("seed") else None,
        stop=tuple(msg.stop), stop_token_ids=tuple(msg.stop_token_ids), min_tokens=msg.min_tokens,
        logprobs=msg.logprobs if msg.HasField("logprobs") else True)


def batch_from_proto(request: generator_pb2.GenerateRequest, default_max_tokens: int) -> GenerateBatch:
    prompts = [PromptInput(p.prompt_id, tuple(p.token_ids), p.text, tuple((m.role, m.content) for m in p.messages))
               for p in request.prompts]
    version = request.policy_version if request.HasField("policy_version") else None
    return GenerateBatch(prompts, sampling_from_proto(request.sampling, default_max_tokens), version)


def completion_to_proto(c: Completion) -> common_pb2.Completion:
    return common_pb2.Completion(token_ids=c.token_ids, logprobs=c.logprobs,
                                 finish_reason=finish_reason_to_proto(c.finish_reason), text=c.text)


def group_to_proto(group: GroupResult) -> generator_pb2.GenerateResponse:
    return generator_pb2.GenerateResponse(
        prompt_index=group.prompt_index, prompt_id=group.prompt.prompt_id, prompt_ids=group.prompt.prompt_ids,
        prompt_text=group.prompt.prompt_text, completions=[completion_to_proto(c) for c in group.completions],
        policy_version=group.policy_version)


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """Translates GeneratorService calls for `core`.

    Registered before the server starts (gRPC wants handlers before `start`), with no core; the
    server sets it once the model and the current policy are loaded and only then lets calls
    through (GrpcServer.set_ready).
    """

    def __init__(self, core: Generator | None = None):
        self.core = core

    async def Generate(self, request, context) -> AsyncIterator[generator_pb2.GenerateResponse]:
        batch = batch_from_proto(request, self.core.config.default_max_tokens)
        # aclosing: a cancelled call closes the core's iterator at once, which aborts its engine requests.
        async with contextlib.aclosing(self.core.generate(batch)) as groups:
            async for group in groups:
                yield group_to_proto(group)

    async def LoadAdapter(self, request_iterator, context) -> generator_pb2.LoadAdapterResponse:
        # Chunks are hashed and spooled to a staging file while the rest arrive: little is left at the end.
        async with receive_adapter(request_iterator, self.core.staging_dir) as received:
            result = await self.core.load_adapter(received.payload, received.first_chunk_at)
        return generator_pb2.LoadAdapterResponse(policy_version=result.policy_version, load_seconds=result.load_seconds,
                                                 loaded_versions=result.loaded_versions)

    async def GetInfo(self, request, context) -> generator_pb2.GeneratorInfo:
        return generator_pb2.GeneratorInfo(**dataclasses.asdict(self.core.info()))  # same field names
