"""Where the learner's rollout batches come from: a small interface with two implementations.

- `learner.pipeline` runs generation, reward scoring and reference log-probs inside the learner
  process (the default, and what `rlfleet up` uses);
- the PushRollouts queue accepts batches that any external producer streams to the learner.

The training loop only sees this interface, so either can feed it, and tests can feed fixed batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from learner.admission import BatchLimits
from rlfleet.rollouts import Batch


class RolloutSource(ABC):
    """A stream of complete rollout batches, bounded by the policy version the learner has reached."""

    async def start(self) -> None:
        """Begins producing (e.g. starts generation); called once before the first `next_batch`."""

    @abstractmethod
    async def next_batch(self) -> Batch:
        """The next batch to train on; waits until one is complete."""

    def set_policy_version(self, version: int) -> None:
        """Tells the producer the newest policy version, so it can keep rollouts within max_staleness."""

    def set_limits(self, limits: BatchLimits) -> None:
        """What a batch must fit (learner.admission); a source that takes batches from outside checks them
        against it at the door. Called before the first `next_batch` and after every step."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position in the data (dataset cursor, ...) saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the position saved by `state_dict` (on --resume)."""

    async def close(self) -> None:
        """Stops producing and releases connections; work in flight is reported, never lost silently."""
