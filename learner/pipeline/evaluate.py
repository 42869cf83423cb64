"""Held-out evaluation through the running cluster: greedy (or sampled) completions from the generators, scored by the reward services.

With `source.environment` a row's completion is a multi-turn trajectory against the environment
service (learner/pipeline/multiturn.py), scored by it and the reward services alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from learner.pipeline.config import PipelineConfig
from learner.pipeline.dataset import PromptRow
from learner.pipeline.scoring import GroupScorer
from rlfleet.clients import GeneratorClient
from rlfleet.generation import PromptInput, Sampling
from rlfleet.rollouts import Group, trajectory_summary

if TYPE_CHECKING:
    from learner.config import LearnerConfig
    from learner.pipeline.multiturn import MultiTurnDriver


@dataclass(frozen=True)
class EvalResult:
    """Mean reward (and mean of each component) over the rows' completions, with the policy version that produced them."""

    mean_reward: float
    components: dict[str, float]
    rows: int
    policy_version: int
    trajectories: dict[str, float] = field(default_factory=dict)
    """Multi-turn runs: rlfleet.rollouts.trajectory_summary of the rows' trajectories (tool_call_rate, ...)."""


async def evaluate(rows: list[PromptRow], config: LearnerConfig, batch_size: int = 32, samples: int = 0,
                   seed: int = 0) -> EvalResult:
    """Completions of every row on the first generator target, scored like training rollouts.

    samples = 0: one greedy (temperature 0) completion per row. samples = k >= 1: k completions per
    row drawn as training draws them (source.temperature and top_p), seeded by `seed`; the means are
    over all of them (mean@k: what the policy does, not only its single most likely answer).
    Prompts reach the generator exactly as in training (`PromptInput.from_dataset`): chat messages as
    turns, text as a user turn when `source.chat_template` is on.
    """
    if samples < 0:
        raise ValueError(f"samples: {samples}; 0 (greedy) or the completions to draw per row")
    source = config.source
    if samples == 0:
        sampling = Sampling(n=1, max_tokens=source.max_tokens, temperature=0.0, stop=tuple(source.stop))
    else:
        sampling = Sampling(n=samples, max_tokens=source.max_tokens, temperature=source.temperature,
                            top_p=source.top_p, stop=tuple(source.stop), seed=seed)
    scorer = GroupScorer(source.rewards, config.client, source.reward_timeout_seconds, source.retry_backoff_seconds)
    groups: list[Group] = []
    try:
        async with GeneratorClient(config.generators[0], config.client) as generator, \
                _multi_turn(config) as turns:
            for start in range(0, len(rows), batch_size):
                groups += await _generate_and_score(generator, scorer, rows[start:start + batch_size], source,
                                                    sampling, turns)
    finally:
        await scorer.close()
    completions = [sample for group in groups for sample in group.samples]
    components: dict[str, list[float]] = {}
    for sample in completions:
        for name, value in sample.reward_components.items():
            components.setdefault(name, []).append(value)
    return EvalResult(sum(s.reward for s in completions) / max(len(completions), 1),
                      {k: sum(v) / len(v) for k, v in components.items()}, len(groups),
                      max((g.policy_version for g in groups), default=0),
                      trajectory_summary([s.trajectory for g in groups for s in g.samples if s.trajectory is not None]))


@contextlib.asynccontextmanager
async def _multi_turn(config: LearnerConfig):
    """The multi-turn driver of `source.environment` (its client closed on the way out), else None."""
    env = config.source.environment
    if env is None:
        yield None
        return
    from learner.pipeline.multiturn import MultiTurnDriver
    from learner.pipeline.turns import TurnRenderer
    from rlfleet.clients import EnvironmentClient

    async with EnvironmentClient(env.address, config.client, env.timeout_seconds, name="environment") as client:
        yield MultiTurnDriver(env, TurnRenderer.from_pretrained(config.model), client)


async def _generate_and_score(generator: GeneratorClient, scorer: GroupScorer, rows: list[PromptRow],
                              source: PipelineConfig, sampling: Sampling, turns: MultiTurnDriver | None = None
                              ) -> list[Group]:
    by_id = {r.prompt_id: r for r in rows}
    prompts = [PromptInput.from_dataset(r.prompt_id, r.prompt, source.chat_template) for r in rows]
    if turns is None:
        groups = [g async for g in generator.generate(prompts, sampling, timeout=source.generate_timeout_seconds)]
    else:   # a row whose environment does not start has no trajectory to score: it is left out
        max_model_len = (await generator.info(timeout=5.0)).max_model_len or None   # 0: not said
        groups = [done.group async for done in turns.rollouts(rows, generator, sampling,
                                                              source.generate_timeout_seconds, max_model_len)
                  if done.group is not None]
    for group in groups:
        group.columns = dict(by_id[group.prompt_id].columns)
    await scorer.score([(group, by_id[group.prompt_id]) for group in groups])
    return groups
