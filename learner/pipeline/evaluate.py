"""Held-out evaluation through the running cluster: greedy completions from the generators, scored by the reward services."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from learner.pipeline.config import PipelineConfig
from learner.pipeline.dataset import PromptRow
from learner.pipeline.scoring import RewardService, combine
from rlfleet.client import make_channel
from rlfleet.rollouts import Group, Sample, finish_reason_from_proto
from rlfleet.v1 import common_pb2, generator_pb2, generator_pb2_grpc


@dataclass(frozen=True)
class EvalResult:
    """Mean reward (and mean of each component) over the rows, with the policy version that produced them."""

    mean_reward: float
    components: dict[str, float]
    rows: int
    policy_version: int


async def evaluate(rows: list[PromptRow], config: PipelineConfig, batch_size: int = 32) -> EvalResult:
    """Greedy (temperature 0) completion of every row on the first generator, scored like training rollouts."""
    rewards = [RewardService(r, config.client, config.reward_timeout_seconds, config.retry_backoff_seconds)
               for r in config.rewards]
    totals: list[float] = []
    components: dict[str, list[float]] = {}
    versions = set()
    async with make_channel(config.generators[0], config.client) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            prompts = [generator_pb2.Prompt(prompt_id=r.prompt_id, messages=[
                common_pb2.ChatMessage(role="user", content=r.prompt)]) if config.chat_template and isinstance(
                r.prompt, str) else generator_pb2.Prompt(prompt_id=r.prompt_id, text=str(r.prompt)) for r in chunk]
            request = generator_pb2.GenerateRequest(prompts=prompts, sampling=common_pb2.SamplingParams(
                n=1, max_tokens=config.max_tokens, temperature=0.0, stop=config.stop))
            by_id = {r.prompt_id: r for r in chunk}
            responses = [r async for r in stub.Generate(request, timeout=config.generate_timeout_seconds)]
            for response in responses:
                row = by_id[response.prompt_id]
                versions.add(response.policy_version)
                c = response.completions[0]
                group = Group(row.prompt_id, list(response.prompt_ids), [Sample(
                    list(c.token_ids), list(c.logprobs), finish_reason_from_proto(c.finish_reason), c.text)],
                    response.policy_version, response.prompt_text, dict(row.columns))
                scores = [(s, await s.score(group, row.prompt if isinstance(row.prompt, str) else group.prompt_text,
                                            row.answer)) for s in rewards]
                combine(group, scores)
                totals.append(group.samples[0].reward)
                for name, value in group.samples[0].reward_components.items():
                    components.setdefault(name, []).append(value)
    await asyncio.gather(*(s.close() for s in rewards))
    return EvalResult(sum(totals) / max(len(totals), 1), {k: sum(v) / len(v) for k, v in components.items()},
                      len(totals), max(versions, default=0))
