"""Scores finished groups on every reward service (weighted) and fetches reference log-probs.

A reward service that is down pauses scoring with one clear log line and resumes when it answers
again: a group is never trained on with a made-up reward. Each Score call carries a request id, so
a retry after a lost answer is not scored twice by the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

import grpc

from learner.pipeline import metrics
from learner.pipeline.config import RewardServiceConfig
from rlfleet.client import make_channel
from rlfleet.config import ClientConfig
from rlfleet.rollouts import Group, RewardStatus, finish_reason_to_proto, reward_status_from_proto
from rlfleet.v1 import reference_pb2, reference_pb2_grpc, reward_pb2, reward_pb2_grpc

log = logging.getLogger(__name__)

# Worst first: the sample's status is the worst status any service gave it.
_SEVERITY = [RewardStatus.ERROR, RewardStatus.TIMEOUT, RewardStatus.INVALID_OUTPUT, RewardStatus.OK]


@dataclass
class ItemScore:
    """One service's verdict on one completion."""

    reward: float
    components: dict[str, float]
    status: RewardStatus
    error: str


_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


async def call_until_available(call, what: str, backoff: float, on_retry=lambda: None):
    """Awaits `call()` until it stops failing with a transient status, logging once when paused and when resumed."""
    paused_since = None
    while True:
        try:
            result = await call()
            break
        except grpc.aio.AioRpcError as err:
            if err.code() not in _TRANSIENT:
                raise
            on_retry()
            if paused_since is None:
                paused_since = time.monotonic()
                log.warning("%s is unavailable (%s); pipeline paused until it answers", what, err.code().name)
            await asyncio.sleep(backoff)
    if paused_since is not None:
        log.info("%s is back after %.1fs; pipeline resumed", what, time.monotonic() - paused_since)
    return result


class RewardService:
    """One reward service: scores a group's completions, retrying (paused) while the service is down."""

    def __init__(self, config: RewardServiceConfig, client: ClientConfig, timeout: float, backoff: float):
        self.name = config.name or config.address
        self.weight = config.weight
        self.timeout = timeout
        self.backoff = backoff
        self._channel = make_channel(config.address, client)
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)
        self.script_version = ""

    async def score(self, group: Group, prompt: str, answer: str | None) -> list[ItemScore]:
        items = [reward_pb2.RewardItem(
            prompt=prompt, completion=s.text, reference=answer,
            columns={k: json.dumps(v) for k, v in group.columns.items()},
            completion_tokens=len(s.token_ids), finish_reason=finish_reason_to_proto(s.finish_reason))
            for s in group.samples]
        request = reward_pb2.ScoreRequest(request_id=uuid.uuid4().hex, items=items)
        start = time.perf_counter()
        reply = await call_until_available(lambda: self._stub.Score(request, timeout=self.timeout),
                                           f"reward service {self.name}", self.backoff,
                                           on_retry=metrics.REWARD_UNAVAILABLE.labels(self.name).inc)
        metrics.REWARD_LATENCY.labels(self.name).observe(time.perf_counter() - start)
        if self.script_version and reply.script_version != self.script_version:
            log.warning("reward service %s changed its script version %s -> %s mid-run",
                        self.name, self.script_version, reply.script_version)
        self.script_version = reply.script_version
        scores = [ItemScore(r.reward, dict(r.components), reward_status_from_proto(r.status, f"results[{i}].status"),
                            r.error) for i, r in enumerate(reply.results)]
        for score in scores:
            metrics.REWARD_ITEMS.labels(self.name, score.status.value).inc()
        return scores

    async def close(self) -> None:
        await self._channel.close()


def combine(group: Group, per_service: list[tuple[RewardService, list[ItemScore]]]) -> list[str]:
    """Writes the weighted total, components and worst status into each sample; returns the errors seen."""
    errors = []
    for i, sample in enumerate(group.samples):
        verdicts = [(service, scores[i]) for service, scores in per_service]
        sample.reward = sum(service.weight * score.reward for service, score in verdicts)
        sample.reward_components = {}
        for service, score in verdicts:
            for name, value in score.components.items():
                key = name if name not in sample.reward_components else f"{service.name}/{name}"
                sample.reward_components[key] = value
        sample.reward_status = min((score.status for _, score in verdicts), key=_SEVERITY.index)
        errors += [f"{service.name}: {score.error}" for service, score in verdicts if score.error]
    return errors


class ReferenceClient:
    """Fills `ref_logprobs` of every sample from the reference service."""

    def __init__(self, address: str, client: ClientConfig, timeout: float, backoff: float):
        self._channel = make_channel(address, client)
        self._stub = reference_pb2_grpc.ReferenceServiceStub(self._channel)
        self.timeout = timeout
        self.backoff = backoff

    async def fill(self, group: Group) -> None:
        sequences = [reference_pb2.TokenSequence(token_ids=group.prompt_ids + s.token_ids,
                                                 prompt_length=len(group.prompt_ids)) for s in group.samples]
        start = time.perf_counter()
        request = reference_pb2.LogProbsRequest(sequences=sequences)
        reply = await call_until_available(lambda: self._stub.LogProbs(request, timeout=self.timeout),
                                           "reference service", self.backoff)
        metrics.REFERENCE_LATENCY.observe(time.perf_counter() - start)
        for sample, result in zip(group.samples, reply.results, strict=True):
            sample.ref_logprobs = list(result.logprobs)

    async def close(self) -> None:
        await self._channel.close()
