"""ReferenceClient: the frozen reference model's per-token log-probs of completions, in domain types.

    async with ReferenceClient("127.0.0.1:50071", ClientConfig(), timeout=60, retry=Retry.constant(1.0)) as ref:
        await ref.fill(group)            # every sample's ref_logprobs, [T] each
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlfleet.clients.channel import ChannelClient
from rlfleet.clients.retry import Retry, call_with_retry
from rlfleet.config import ClientConfig
from rlfleet.rollouts import Group
from rlfleet.v1 import reference_pb2, reference_pb2_grpc


@dataclass(frozen=True)
class SequenceLogProbs:
    """Reference log-probs (and, when asked, entropies) of one sequence's completion tokens."""

    logprobs: list[float]                 # [T] T = len(token_ids) - prompt_length
    entropies: list[float] | None = None  # [T] nats, or None when not asked


@dataclass(frozen=True)
class ReferenceInfo:
    """The reference model's identity and limits, as GetInfo describes them."""

    model: str
    base_model_id: str
    vocab_size: int
    max_model_len: int
    dtype: str
    max_batch_tokens: int


class ReferenceClient(ChannelClient):
    """One reference service; `timeout` bounds each LogProbs attempt, `retry` how long a down service is waited for."""

    def __init__(self, target: str, config: ClientConfig | None = None, timeout: float | None = None,
                 retry: Retry | None = None):
        super().__init__(target, config)
        self.timeout = timeout or self.config.timeout_seconds
        self.retry = retry
        self._stub = reference_pb2_grpc.ReferenceServiceStub(self._channel)

    async def logprobs(self, sequences: Sequence[tuple[Sequence[int], int]],
                       return_entropy: bool = False) -> list[SequenceLogProbs]:
        """For each (token_ids, prompt_length): log p of every token after the prompt, in order."""
        request = reference_pb2.LogProbsRequest(return_entropy=return_entropy, sequences=[
            reference_pb2.TokenSequence(token_ids=ids, prompt_length=n) for ids, n in sequences])
        reply = await call_with_retry(lambda timeout: self._stub.LogProbs(request, timeout=timeout),
                                      f"reference service {self.target}", self.timeout, self.retry)
        if len(reply.results) != len(sequences):
            raise ValueError(f"results: the reference answered {len(reply.results)} for {len(sequences)} sequences")
        return [SequenceLogProbs(list(r.logprobs), list(r.entropies) if return_entropy else None)
                for r in reply.results]

    async def fill(self, group: Group) -> None:
        """Sets `ref_logprobs` of every sample of `group` (prompt_ids + the sample's token_ids)."""
        results = await self.logprobs([(group.prompt_ids + s.token_ids, len(group.prompt_ids)) for s in group.samples])
        for sample, result in zip(group.samples, results, strict=True):
            sample.ref_logprobs = result.logprobs

    async def info(self, timeout: float | None = None) -> ReferenceInfo:
        reply = await self._stub.GetInfo(reference_pb2.GetReferenceInfoRequest(), timeout=timeout or self.timeout)
        return ReferenceInfo(reply.model, reply.base_model_id, reply.vocab_size, reply.max_model_len, reply.dtype,
                             reply.max_batch_tokens)
