"""RewardClient: ScoreBatch, Score and ListRewards of one reward service, in domain types.

    async with RewardClient("127.0.0.1:50061", ClientConfig(), timeout=60, retry=Retry.constant(1.0)) as reward:
        scores = await reward.score_batch(RewardBatch([prompt], [completion], {"answer": ["4"]}))   # BatchScores
        scores = await reward.score([RewardItem(prompt, completion, {"answer": "4"})])              # list[ItemScore]

`score_batch` is the fast path (columns both ways, ScoreBatch); `score` sends one message per item.

Every Score call carries a fresh request id that its retries reuse, so a retry after a lost answer
is not scored twice by the service. With a retry policy that never gives up, a service that is
down pauses the caller until it answers again: an item is never given a made-up score.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence

from rlfleet.clients.channel import ChannelClient
from rlfleet.clients.retry import Retry, call_with_retry
from rlfleet.config import ClientConfig
from rlfleet.outcomes import (
    BatchScores,
    ItemScore,
    RewardBatch,
    RewardInfo,
    RewardItem,
    finish_reason_to_proto,
    reward_status_from_proto,
)
from rlfleet.v1 import common_pb2, reward_pb2, reward_pb2_grpc


def item_to_proto(item: RewardItem) -> reward_pb2.RewardItem:
    """Columns go JSON-encoded (the gold answer is the `answer` column, as the service passes it on)."""
    finish = (finish_reason_to_proto(item.finish_reason) if item.finish_reason is not None
              else common_pb2.FINISH_REASON_UNSPECIFIED)
    return reward_pb2.RewardItem(prompt=item.prompt, completion=item.completion,
                                 columns={k: json.dumps(v) for k, v in item.columns.items()},
                                 completion_tokens=item.completion_tokens, finish_reason=finish)


def batch_to_proto(request_id: str, batch: RewardBatch) -> reward_pb2.ScoreBatchRequest:
    """Each dataset column goes as one JSON list over the batch."""
    finish = () if batch.finish_reasons is None else [
        common_pb2.FINISH_REASON_UNSPECIFIED if r is None else finish_reason_to_proto(r) for r in batch.finish_reasons]
    return reward_pb2.ScoreBatchRequest(
        request_id=request_id, prompts=batch.prompts, completions=batch.completions,
        completion_tokens=batch.completion_tokens or (), finish_reasons=finish,
        columns={name: json.dumps(values) for name, values in batch.columns.items()})


def batch_scores_from_proto(reply: reward_pb2.ScoreBatchResponse, expected: int) -> BatchScores:
    rewards = list(reply.rewards)
    for field, size in (("rewards", len(rewards)), ("statuses", len(reply.statuses)),
                        *((f"components[{c.name!r}]", len(c.values)) for c in reply.components)):
        if size != expected:
            raise ValueError(f"{field}: the reward service answered {size} entries for {expected} items")
    ok = common_pb2.REWARD_STATUS_OK
    statuses = [reward_status_from_proto(s, f"statuses[{i}]") if s != ok else _OK
                for i, s in enumerate(reply.statuses)]
    return BatchScores(rewards, statuses, {c.name: list(c.values) for c in reply.components}, dict(reply.errors))


def scores_from_proto(reply: reward_pb2.ScoreResponse, expected: int) -> list[ItemScore]:
    if len(reply.results) != expected:
        raise ValueError(f"results: the reward service answered {len(reply.results)} results for {expected} items")
    return [ItemScore(r.reward, dict(r.components), reward_status_from_proto(r.status, f"results[{i}].status"),
                      r.error) for i, r in enumerate(reply.results)]


_OK = reward_status_from_proto(common_pb2.REWARD_STATUS_OK)


class RewardClient(ChannelClient):
    """One reward service; `script_version` is the version its last answer reported."""

    def __init__(self, target: str, config: ClientConfig | None = None, timeout: float | None = None,
                 retry: Retry | None = None, name: str = ""):
        super().__init__(target, config)
        self.name = name or target
        self.timeout = timeout or self.config.timeout_seconds
        """Deadline of one Score attempt, in seconds."""
        self.retry = retry
        self.script_version = ""
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)

    async def score(self, items: Sequence[RewardItem], on_retry: Callable[[], None] | None = None) -> list[ItemScore]:
        """One ItemScore per item, in order (check each status: a failed item scores 0.0)."""
        request = reward_pb2.ScoreRequest(request_id=uuid.uuid4().hex, items=[item_to_proto(i) for i in items])
        reply = await call_with_retry(lambda timeout: self._stub.Score(request, timeout=timeout),
                                      f"reward service {self.name}", self.timeout, self.retry, on_retry)
        self.script_version = reply.script_version
        return scores_from_proto(reply, len(items))

    async def score_batch(self, batch: RewardBatch, on_retry: Callable[[], None] | None = None) -> BatchScores:
        """The batch's scores as columns, in item order (check each status: a failed item scores 0.0)."""
        request = batch_to_proto(uuid.uuid4().hex, batch)
        reply = await call_with_retry(lambda timeout: self._stub.ScoreBatch(request, timeout=timeout),
                                      f"reward service {self.name}", self.timeout, self.retry, on_retry)
        self.script_version = reply.script_version
        return batch_scores_from_proto(reply, len(batch))

    async def list_rewards(self, timeout: float | None = None) -> list[RewardInfo]:
        reply = await self._stub.ListRewards(reward_pb2.ListRewardsRequest(), timeout=timeout or self.timeout)
        self.script_version = reply.script_version
        return [RewardInfo(r.name, r.weight, r.kind, r.description) for r in reply.rewards]
