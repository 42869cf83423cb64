"""The PushRollouts-fed rollout source: a bounded queue that external producers fill over gRPC."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from learner import metrics
from learner.admission import BatchLimits, check_batch
from learner.sources import RolloutSource
from rlfleet.errors import InvalidRequest, NotReady, Overloaded
from rlfleet.rollouts import Batch


class QueueSource(RolloutSource):
    """Batches offered by PushRollouts, trained on in arrival order.

    A full queue refuses a batch with `Overloaded` (RESOURCE_EXHAUSTED: the producer backs off and
    re-sends); a batch whose id was seen before is ignored and counted, so re-sending is idempotent.
    A batch a training step cannot take (learner.admission) is refused with InvalidRequest; until the
    loop has set the limits (the model is loaded, a checkpoint restored) every batch gets NotReady.
    """

    def __init__(self, max_queued: int, remembered_ids: int = 100_000, require_ref_logprobs: bool = False):
        self.require_ref_logprobs = require_ref_logprobs
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=max_queued)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._consumed_ids: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered_ids
        self.accepted = 0
        self.duplicates = 0
        self.consumed = 0
        self.limits: BatchLimits | None = None

    def offer(self, batch: Batch) -> bool:
        """Queues `batch`; False when its id was already seen; raises Overloaded when the queue is full."""
        self._check(batch)
        if batch.batch_id in self._seen:
            self.duplicates += 1
            metrics.RECEIVED_BATCHES.labels("duplicate").inc()
            return False
        try:
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            metrics.RECEIVED_BATCHES.labels("queue_full").inc()
            raise Overloaded(f"rollout queue is full ({self._queue.maxsize} batches); retry later") from None
        self._seen[batch.batch_id] = None
        while len(self._seen) > self._remembered:
            self._seen.popitem(last=False)
        self.accepted += 1
        metrics.RECEIVED_BATCHES.labels("accepted").inc()
        metrics.QUEUED_BATCHES.set(self._queue.qsize())
        return True

    def set_limits(self, limits: BatchLimits) -> None:
        self.limits = limits

    def _check(self, batch: Batch) -> None:
        """Refuses at the door, not in the middle of a training step: what does not fit the model, and
        (with a KL and the reference service) samples without ref_logprobs."""
        if self.limits is None:
            raise NotReady("the learner is still loading (model, checkpoint): retry shortly")
        try:
            check_batch(batch, self.limits)
        except InvalidRequest:
            metrics.RECEIVED_BATCHES.labels("invalid").inc()
            raise
        if not self.require_ref_logprobs:
            return
        for g, group in enumerate(batch.groups):
            for s, sample in enumerate(group.samples):
                if sample.ref_logprobs is None and sample.token_ids:
                    raise InvalidRequest(f"groups[{g}].samples[{s}].ref_logprobs",
                                         "required: algo.kl.coef > 0 and reference = 'service'")

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def next_batch(self) -> Batch:
        batch = await self._queue.get()
        self.consumed += 1
        self._consumed_ids[batch.batch_id] = None
        while len(self._consumed_ids) > self._remembered:
            self._consumed_ids.popitem(last=False)
        metrics.QUEUED_BATCHES.set(self._queue.qsize())
        return batch

    def state_dict(self) -> dict[str, Any]:
        # Queued batches are not saved: their producers re-send them after a restart (so their ids
        # must not be remembered), while the ids of consumed batches keep those from training twice.
        return {"consumed": self.consumed, "consumed_batch_ids": list(self._consumed_ids)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = int(state.get("consumed", 0))
        self._consumed_ids = OrderedDict.fromkeys(state.get("consumed_batch_ids", []))
        self._seen = OrderedDict(self._consumed_ids)
