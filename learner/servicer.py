"""LearnerService: PushRollouts / GetPolicy / GetStatus, protobuf <-> the loop's domain state only."""

from __future__ import annotations

from learner.loop import LearnerState
from learner.push import AdapterPusher
from learner.queue_source import QueueSource
from rlfleet.adapters import to_chunks
from rlfleet.errors import NotFound, Rejected
from rlfleet.rollouts import batch_from_proto
from rlfleet.v1 import learner_pb2, learner_pb2_grpc


class LearnerServicer(learner_pb2_grpc.LearnerServiceServicer):
    """Reads the loop's state; PushRollouts feeds the queue source when the learner uses one."""

    def __init__(self, status: LearnerState, pusher: AdapterPusher, queue: QueueSource | None,
                 chunk_bytes: int):
        self.status = status
        self.pusher = pusher
        self.queue = queue
        self.chunk_bytes = chunk_bytes

    async def PushRollouts(self, request_iterator, context) -> learner_pb2.PushRolloutsResponse:
        if self.queue is None:
            raise Rejected("this learner generates its own rollouts (source.type = 'pipeline'); "
                           "start it with source.type = 'push' to accept PushRollouts")
        accepted = duplicates = 0
        async for batch_pb in request_iterator:
            # Each batch is queued as soon as it arrives: a later bad or refused batch loses none before it.
            if self.queue.offer(batch_from_proto(batch_pb)):
                accepted += 1
            else:
                duplicates += 1
        return learner_pb2.PushRolloutsResponse(accepted_batches=accepted, duplicate_batches=duplicates)

    async def GetPolicy(self, request, context):
        adapter = self.status.adapter
        if adapter is None:
            raise NotFound("no adapter version yet: serve the base model")
        if adapter.policy_version <= request.newer_than:
            raise NotFound(f"newest version is {adapter.policy_version}, not newer than {request.newer_than}")
        for chunk in to_chunks(adapter, self.chunk_bytes):
            yield chunk

    async def GetStatus(self, request, context) -> learner_pb2.LearnerStatus:
        return learner_pb2.LearnerStatus(
            step=self.status.step, policy_version=self.status.policy_version,
            queued_batches=self.queue.depth if self.queue is not None else 0,
            last_staleness=self.status.last_staleness, state=self.status.state,
            generator_versions=dict(self.pusher.acked))
