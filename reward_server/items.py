"""Domain types of the reward server: items to score, per-function outcomes, reward specs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlfleet.outcomes import FinishReason, ItemScore, RewardStatus


@dataclass(slots=True)
class RewardItem:
    """One (prompt, completion) pair with its dataset columns (already JSON-decoded)."""

    prompt: str
    completion: str
    columns: dict[str, Any] = field(default_factory=dict)
    completion_tokens: int = 0
    """Completion length in tokens; 0 = unknown."""
    finish_reason: FinishReason | None = None
    """Why generation stopped; None when unknown."""

    def __reduce__(self):  # a plain tuple pickles ~3x faster than dataclass state (pipes carry many items)
        return RewardItem, (self.prompt, self.completion, self.columns, self.completion_tokens, self.finish_reason)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments a reward function receives for this item (TRL passes columns the same way)."""
        return {**self.columns, "completion_tokens": self.completion_tokens, "finish_reason": self.finish_reason}


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
class RewardSpec:
    """One reward function the service runs: its component name, weight and where it comes from."""

    name: str
    weight: float
    kind: str
    """"function" (from the user's script), "builtin" or "model"."""
    description: str = ""
    batched: bool = True
    """True for the TRL form f(prompts, completions, **columns) -> list; False for f(prompt, completion, ...)."""
