"""Scores finished groups on every reward service of the pipeline, weighted, into the groups' samples.

Many groups go in one ScoreBatch call per service (columns both ways; each item keeps its own typed
status), so a batch costs a few calls, not one per group.

A reward service that is down pauses scoring (the RewardClient retries until it answers) and
resumes when it is back: a group is never trained on with a made-up reward. A ScoreBatch call that runs
past its deadline is not retried (the same work would time out again, for ever): its items end
with status TIMEOUT. Several services combine with `rlfleet.outcomes.combine`, the same rule the
reward server applies to its functions.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence

import grpc

from learner.pipeline import metrics
from learner.pipeline.config import RewardServiceConfig
from learner.pipeline.dataset import PromptRow
from rlfleet.clients import TRANSIENT, ReferenceClient, Retry, RewardClient
from rlfleet.config import ClientConfig
from rlfleet.outcomes import ItemScore, RewardBatch, RewardItem, RewardStatus, combine
from rlfleet.rollouts import Group, Sample

log = logging.getLogger(__name__)


def reward_items(group: Group, row: PromptRow) -> list[RewardItem]:
    """One item per sample of `row`'s group; the gold answer is the `answer` column unless the row has one.

    A chat-format prompt reaches the reward functions as the text the model saw (its rendered template).
    """
    prompt = row.prompt if isinstance(row.prompt, str) else group.prompt_text
    columns = dict(group.columns)
    if row.answer is not None:
        columns.setdefault("answer", row.answer)
    return [RewardItem(prompt, s.text, columns, len(s.token_ids), s.finish_reason) for s in group.samples]


def _environment_part(sample: Sample) -> list[tuple[str, float, ItemScore]]:
    """A multi-turn trajectory's own score from its environment (get_reward(), already weighted), as one more part."""
    trajectory = sample.trajectory
    if trajectory is None or trajectory.environment_score is None:
        return []
    return [("environment", 1.0, trajectory.environment_score)]


class GroupScorer:
    """The pipeline's reward services; `score` writes each sample's reward, components and status."""

    def __init__(self, services: list[RewardServiceConfig], client: ClientConfig, timeout: float, backoff: float,
                 max_items_per_call: int = 1024):
        retry = Retry(backoff, backoff, codes=TRANSIENT - {grpc.StatusCode.DEADLINE_EXCEEDED})
        self.services = [(RewardClient(s.address, client, timeout, retry, s.name), s.weight) for s in services]
        self.max_items_per_call = max_items_per_call

    async def score(self, groups: Sequence[tuple[Group, PromptRow]]) -> list[list[str]]:
        """Scores every sample of every (group, row) on every service, all groups in as few ScoreBatch calls as
        `max_items_per_call` allows (the services concurrently); returns each group's errors of failed samples."""
        batch = RewardBatch.from_items([item for group, row in groups for item in reward_items(group, row)])
        per_service = await asyncio.gather(*(self._score_all(reward, batch) for reward, _ in self.services))
        errors: list[list[str]] = []
        i = 0
        for group, _ in groups:
            errors.append([])
            for sample in group.samples:
                score = combine([*((reward.name, weight, scores[i])
                                   for (reward, weight), scores in zip(self.services, per_service, strict=True)),
                                 *_environment_part(sample)])
                sample.reward, sample.reward_components, sample.reward_status = (score.reward, score.components,
                                                                                 score.status)
                if score.error:
                    errors[-1].append(score.error)
                i += 1
        return errors

    async def _score_all(self, reward: RewardClient, batch: RewardBatch) -> list[ItemScore]:
        step = self.max_items_per_call
        scores: list[ItemScore] = []
        for start in range(0, len(batch), step):
            scores += await self._score_on(reward, batch if len(batch) <= step else batch.slice(start, start + step))
        return scores

    async def _score_on(self, reward: RewardClient, batch: RewardBatch) -> list[ItemScore]:
        start, version = time.perf_counter(), reward.script_version
        try:
            scored = await reward.score_batch(batch, on_retry=metrics.REWARD_UNAVAILABLE.labels(reward.name).inc)
            scores = scored.items()
        except grpc.aio.AioRpcError as err:
            if err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            error = f"no answer within {reward.timeout:g} s (reward_timeout_seconds)"  # combine names the service
            scores = [ItemScore(0.0, {}, RewardStatus.TIMEOUT, error) for _ in range(len(batch))]
        metrics.REWARD_LATENCY.labels(reward.name).observe(time.perf_counter() - start)
        if version and reward.script_version != version:
            log.warning("reward service %s changed its script version %s -> %s mid-run",
                        reward.name, version, reward.script_version)
        for status, count in collections.Counter(score.status.value for score in scores).items():
            metrics.REWARD_ITEMS.labels(reward.name, status).inc(count)
        return scores

    async def close(self) -> None:
        for reward, _ in self.services:
            await reward.close()


async def fill_reference(reference: ReferenceClient, groups: Sequence[Group]) -> None:
    """Sets `ref_logprobs` of every sample of every group from one LogProbs call (the service packs it by tokens)."""
    sequences = [(g.prompt_ids + s.token_ids, len(g.prompt_ids)) for g in groups for s in g.samples]
    results = iter(await reference.logprobs(sequences))
    for group in groups:
        for sample in group.samples:
            sample.ref_logprobs = next(results).logprobs
