"""Domain types of the reward server: per-function outcomes, reward specs (items and scores: rlfleet.outcomes)."""

from __future__ import annotations

from dataclasses import dataclass

from rlfleet.outcomes import ItemScore, RewardInfo, RewardItem, RewardStatus

# RewardItem is the Score RPC's domain type, shared with rlfleet.clients.RewardClient; the reward
# server's modules may import it from here too.
__all__ = ["Outcome", "RewardItem", "RewardSpec"]


@dataclass(slots=True)
class Outcome:
    """What one reward function produced for one item: a value (None = not applicable) or a failure."""

    status: RewardStatus
    value: float | None = None
    error: str = ""

    def __reduce__(self):
        return Outcome, (self.status, self.value, self.error)

    def score(self, name: str) -> ItemScore:
        """This outcome as the score of the component `name` (a failure scores 0.0 with no component)."""
        if self.status is not RewardStatus.OK:
            return ItemScore(0.0, {}, self.status, f"{self.status.name}: {self.error}")
        return ItemScore(0.0, {}) if self.value is None else ItemScore(self.value, {name: self.value})


@dataclass(frozen=True)
class RewardSpec(RewardInfo):
    """One reward function the service runs: what ListRewards tells clients, and how to call it."""

    batched: bool = True
    """True for the TRL form f(prompts, completions, **columns) -> list; False for f(prompt, completion, ...)."""
