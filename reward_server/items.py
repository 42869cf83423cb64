"""Domain types of the reward server: per-function outcomes (one item, or a batch as columns), reward specs.

Items and scores themselves are rlfleet.outcomes' (RewardBatch in, BatchScores out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rlfleet.outcomes import RewardBatch, RewardInfo, RewardItem, RewardStatus

# RewardItem and RewardBatch are the Score RPCs' domain types, shared with rlfleet.clients.RewardClient;
# the reward server's modules may import them from here too.
__all__ = ["Outcome", "Outcomes", "RewardBatch", "RewardItem", "RewardSpec"]


@dataclass(slots=True)
class Outcome:
    """What one reward function produced for one item: a value (None = not applicable) or a failure."""

    status: RewardStatus
    value: float | None = None
    error: str = ""


@dataclass(slots=True)
class Outcomes:
    """What one reward function produced for a run of items, as columns, with the (rare) failures apart.

    Kept as lists so that the common case (every item OK) costs no Python object per item.
    """

    values: list[float]
    """One per item: the value, or 0.0 where the function returned None or failed on the item."""
    absent: list[int] = field(default_factory=list)
    """Indices of the items the function returned None for (the component is left out, not counted as 0)."""
    failures: dict[int, Outcome] = field(default_factory=dict)
    """Index -> the failure (status and error) of each item that is not OK."""

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def failed(cls, n: int, failure: Outcome) -> Outcomes:
        """`n` items that all failed the same way."""
        return cls([0.0] * n, [], dict.fromkeys(range(n), failure))

    @classmethod
    def concat(cls, parts: Sequence[Outcomes]) -> Outcomes:
        """The outcomes of consecutive runs of items, as one run."""
        if len(parts) == 1:
            return parts[0]
        out, offset = cls([]), 0
        for part in parts:
            out.values += part.values
            out.absent += [offset + i for i in part.absent]
            out.failures.update((offset + i, failure) for i, failure in part.failures.items())
            offset += len(part.values)
        return out

    def inserted(self, k: int, failure: Outcome) -> Outcomes:
        """These outcomes with a failed item put back at index k (after the rest of its chunk was re-run)."""
        return Outcomes.concat([Outcomes(self.values[:k], [i for i in self.absent if i < k],
                                         {i: f for i, f in self.failures.items() if i < k}),
                                Outcomes.failed(1, failure),
                                Outcomes(self.values[k:], [i - k for i in self.absent if i >= k],
                                         {i - k: f for i, f in self.failures.items() if i >= k})])


@dataclass(frozen=True)
class RewardSpec(RewardInfo):
    """One reward function the service runs: what ListRewards tells clients, and how to call it."""

    batched: bool = True
    """True for the TRL form f(prompts, completions, **columns) -> list; False for f(prompt, completion, ...)."""
