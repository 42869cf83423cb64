"""GeneratorClient: Generate, GetInfo, LoadAdapter and the health check of one generator target, in domain types.

    async with GeneratorClient("127.0.0.1:50051", ClientConfig()) as generator:
        prompts = [PromptInput.from_dataset(row.prompt_id, row.prompt) for row in rows]
        async for group in generator.generate(prompts, Sampling(n=8, max_tokens=64)):
            ...   # a rlfleet.rollouts.Group per prompt, in the order they finish

A `dns:///name:port` target round-robins calls over every replica; use
`rlfleet.clients.expand_target` and one client per address to address replicas one by one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence

from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlfleet.adapters import AdapterPayload, encode_chunks, load_adapter_method
from rlfleet.clients.channel import ChannelClient
from rlfleet.config import ClientConfig
from rlfleet.generation import GeneratorInfo, LoadResult, PromptInput, Sampling
from rlfleet.outcomes import finish_reason_from_proto
from rlfleet.rollouts import Group, Sample
from rlfleet.v1 import common_pb2, generator_pb2, generator_pb2_grpc


def prompt_to_proto(prompt: PromptInput) -> generator_pb2.Prompt:
    return generator_pb2.Prompt(prompt_id=prompt.prompt_id, token_ids=prompt.token_ids, text=prompt.text,
                                messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in prompt.messages])


def sampling_to_proto(s: Sampling) -> common_pb2.SamplingParams:
    """Every field set explicitly (the server reads unset optional fields as the same defaults)."""
    return common_pb2.SamplingParams(
        n=s.n, max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
        seed=s.seed, stop=s.stop, stop_token_ids=s.stop_token_ids, min_tokens=s.min_tokens, logprobs=s.logprobs)


def group_from_proto(response: generator_pb2.GenerateResponse) -> Group:
    """One GenerateResponse as a Group (columns empty: the caller knows its dataset row)."""
    samples = [Sample(token_ids=list(c.token_ids), logprobs=list(c.logprobs), text=c.text,
                      finish_reason=finish_reason_from_proto(c.finish_reason, f"completions[{i}].finish_reason"))
               for i, c in enumerate(response.completions)]
    return Group(prompt_id=response.prompt_id, prompt_ids=list(response.prompt_ids), samples=samples,
                 policy_version=response.policy_version, prompt_text=response.prompt_text)


def info_from_proto(msg: generator_pb2.GeneratorInfo) -> GeneratorInfo:
    values = {f.name: getattr(msg, f.name) for f in dataclasses.fields(GeneratorInfo)}  # same field names
    return GeneratorInfo(**{**values, "loaded_versions": list(msg.loaded_versions)})


class GeneratorClient(ChannelClient):
    """One generator target over one channel; a call without `timeout` gets the config's `timeout_seconds`."""

    def __init__(self, target: str, config: ClientConfig | None = None):
        super().__init__(target, config)
        self._stub = generator_pb2_grpc.GeneratorServiceStub(self._channel)
        self._load_adapter = load_adapter_method(self._channel)

    async def generate(self, prompts: Sequence[PromptInput], sampling: Sampling, policy_version: int | None = None,
                       timeout: float | None = None) -> AsyncIterator[Group]:
        """Yields one Group per prompt as soon as all its samples are done; `policy_version` None = newest."""
        request = generator_pb2.GenerateRequest(prompts=[prompt_to_proto(p) for p in prompts],
                                                sampling=sampling_to_proto(sampling), policy_version=policy_version)
        async for response in self._stub.Generate(request, timeout=timeout):
            yield group_from_proto(response)

    async def info(self, timeout: float | None = None) -> GeneratorInfo:
        return info_from_proto(await self._stub.GetInfo(generator_pb2.GetGeneratorInfoRequest(), timeout=timeout))

    async def load_adapter(self, payload: AdapterPayload, chunk_bytes: int, timeout: float | None = None) -> LoadResult:
        """Streams `payload` in `chunk_bytes` slices; the generator serves it as its newest version."""
        reply = await self._load_adapter(encode_chunks(payload, chunk_bytes), timeout=timeout)
        return LoadResult(reply.policy_version, reply.load_seconds, list(reply.loaded_versions))

    async def serving(self, timeout: float = 2.0) -> bool:
        """True when the generator's health check answers SERVING; False for any other answer or failure."""
        try:
            reply = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout)
        except Exception:  # noqa: BLE001 - any failure means "not serving"
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
