"""LearnerClient: PushRollouts, GetPolicy and GetStatus of the learner, in domain types.

    async with LearnerClient("127.0.0.1:50081") as learner:
        result = await learner.push_rollouts([batch])                    # rlfleet.rollouts.Batch
        version = await learner.pull_policy(load, spool_dir=staging)     # None: the learner has no adapter yet
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from rlfleet.adapters import ReceivedAdapter, receive_adapter
from rlfleet.clients.channel import ChannelClient
from rlfleet.clients.retry import Retry, call_with_retry
from rlfleet.config import ClientConfig
from rlfleet.rollouts import Batch, batch_to_proto
from rlfleet.v1 import learner_pb2, learner_pb2_grpc

T = TypeVar("T")


@dataclass(frozen=True)
class PushResult:
    """How many pushed batches the learner queued, and how many it ignored as already seen (same batch_id)."""

    accepted_batches: int
    duplicate_batches: int


@dataclass(frozen=True)
class LearnerStatus:
    """The learner's progress, as GetStatus reports it."""

    step: int
    policy_version: int
    queued_batches: int
    last_staleness: int
    state: str
    generator_versions: dict[str, int]


class LearnerClient(ChannelClient):
    """One learner; a call without `timeout` gets the config's `timeout_seconds`."""

    def __init__(self, target: str, config: ClientConfig | None = None):
        super().__init__(target, config)
        self._stub = learner_pb2_grpc.LearnerServiceStub(self._channel)

    async def push_rollouts(self, batches: Iterable[Batch], timeout: float | None = None) -> PushResult:
        reply = await self._stub.PushRollouts((batch_to_proto(b) for b in batches), timeout=timeout)
        return PushResult(reply.accepted_batches, reply.duplicate_batches)

    async def status(self, timeout: float | None = None) -> LearnerStatus:
        s = await self._stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=timeout)
        return LearnerStatus(s.step, s.policy_version, s.queued_batches, s.last_staleness, s.state,
                             dict(s.generator_versions))

    async def pull_policy(self, load: Callable[[ReceivedAdapter], Awaitable[T]], spool_dir: str | Path | None = None,
                          newer_than: int = 0, retry: Retry | None = None, timeout: float | None = None) -> T | None:
        """Streams the current adapter (verified, spooled to `spool_dir`) into `load`; returns what `load` returns.

        None when the learner has no adapter newer than `newer_than` (NOT_FOUND). `load` runs while
        the staged file exists: it moves it into place or it is deleted. Transient failures are
        retried as `retry` says; a corrupt stream raises InvalidRequest at once.
        """
        async def once(deadline: float) -> T:
            call = self._stub.GetPolicy(learner_pb2.GetPolicyRequest(newer_than=newer_than), timeout=deadline,
                                        wait_for_ready=True)
            async with receive_adapter(call, spool_dir) as received:
                return await load(received)

        try:
            return await call_with_retry(once, f"learner {self.target}", timeout or self.config.timeout_seconds,
                                         retry)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
