"""Typed clients, one per service: they own every proto build and parse, deadlines and retries.

- `GeneratorClient`: Generate (PromptInput + Sampling in, rlfleet.rollouts.Group out), GetInfo, LoadAdapter, health.
- `RewardClient`: ScoreBatch (RewardBatch in, BatchScores out: columns, the fast path), Score (RewardItem in,
  ItemScore out), ListRewards.
- `EnvironmentClient`: sessions of an environment service (a row in; StepResult, ItemScore out), each kept on
  the replica that started it.
- `ReferenceClient`: LogProbs (fills a Group's ref_logprobs), GetInfo.
- `LearnerClient`: PushRollouts (Batch in), GetPolicy (into a staging file), GetStatus.
- `Retry` / `call_with_retry`: the one loop that waits out a service that is down.
- `expand_target`: the one resolver of `dns:///name:port` into the replicas behind it.
- `make_channel`: the channel under all of them (default deadline, auth, TLS, round robin).

Callers pass and receive domain types; only service tests that deliberately send malformed
protos open a raw stub.
"""

from rlfleet.clients.channel import make_channel, make_sync_channel
from rlfleet.clients.environment import EnvironmentClient, Session
from rlfleet.clients.generator import GeneratorClient
from rlfleet.clients.learner import LearnerClient, LearnerStatus, PushResult
from rlfleet.clients.reference import ReferenceClient, ReferenceInfo, SequenceLogProbs
from rlfleet.clients.resolve import expand_target, expand_targets, split_target
from rlfleet.clients.retry import TRANSIENT, Retry, call_with_retry
from rlfleet.clients.reward import RewardClient

__all__ = [
    "TRANSIENT", "EnvironmentClient", "GeneratorClient", "LearnerClient", "LearnerStatus", "PushResult",
    "ReferenceClient", "ReferenceInfo", "Retry", "RewardClient", "SequenceLogProbs", "Session", "call_with_retry",
    "expand_target", "expand_targets", "make_channel", "make_sync_channel", "split_target",
]
