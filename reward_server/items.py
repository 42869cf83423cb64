"""Domain types of the reward server: items to score, per-item outcomes, reward specs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.IntEnum):
    """Outcome of scoring one item; values match rlfleet.v1.RewardStatus."""

    OK = 1
    TIMEOUT = 2
    ERROR = 3
    INVALID_OUTPUT = 4


# When several functions score one item, the item carries the worst status (a TIMEOUT outranks an ERROR
# because it also cost a worker restart).
SEVERITY = {Status.OK: 0, Status.INVALID_OUTPUT: 1, Status.ERROR: 2, Status.TIMEOUT: 3}


@dataclass(slots=True)
class RewardItem:
    """One (prompt, completion) pair with its dataset columns (already JSON-decoded)."""

    prompt: str
    completion: str
    columns: dict[str, Any] = field(default_factory=dict)
    completion_tokens: int = 0
    """Completion length in tokens; 0 = unknown."""
    finish_reason: str | None = None
    """"stop", "length", "abort" or None when unknown."""

    def __reduce__(self):  # a plain tuple pickles ~3x faster than dataclass state (pipes carry many items)
        return RewardItem, (self.prompt, self.completion, self.columns, self.completion_tokens, self.finish_reason)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments a reward function receives for this item (TRL passes columns the same way)."""
        return {**self.columns, "completion_tokens": self.completion_tokens, "finish_reason": self.finish_reason}


@dataclass(slots=True)
class Outcome:
    """What one reward function produced for one item: a value (None = not applicable) or a failure."""

    status: Status
    value: float | None = None
    error: str = ""

    def __reduce__(self):
        return Outcome, (self.status, self.value, self.error)


@dataclass(slots=True)
class ItemScore:
    """The combined score of one item over every reward function of the service."""

    reward: float
    components: dict[str, float]
    status: Status
    error: str = ""


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
