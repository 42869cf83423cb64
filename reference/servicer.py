"""ReferenceService over gRPC: protobuf <-> reference.core types, nothing else."""

from __future__ import annotations

from reference.core import ReferenceScorer, TokenSequence
from rlfleet.v1 import reference_pb2, reference_pb2_grpc


class ReferenceServicer(reference_pb2_grpc.ReferenceServiceServicer):
    """Answers LogProbs with the scorer and GetInfo with the loaded model's identity and limits.

    Registered before the server starts (gRPC wants handlers before `start`), with neither; the
    server sets both once the model is loaded and only then lets calls through (GrpcServer.set_ready).
    """

    def __init__(self):
        self.scorer: ReferenceScorer | None = None
        self.info: reference_pb2.ReferenceInfo | None = None

    async def LogProbs(self, request: reference_pb2.LogProbsRequest, context) -> reference_pb2.LogProbsResponse:
        sequences = [TokenSequence(s.token_ids, s.prompt_length) for s in request.sequences]
        results = await self.scorer.logprobs(sequences, request.return_entropy)
        return reference_pb2.LogProbsResponse(results=[
            reference_pb2.SequenceLogProbs(
                logprobs=r.logprobs.tolist(), entropies=r.entropies.tolist() if r.entropies is not None else ())
            for r in results])

    async def GetInfo(self, request: reference_pb2.GetReferenceInfoRequest, context) -> reference_pb2.ReferenceInfo:
        return self.info
