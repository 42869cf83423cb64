"""How a completion ended and how its scoring went: FinishReason, RewardItem, RewardStatus (severity order), ItemScore.

One vocabulary for every service and client: the generator reports a FinishReason, a RewardItem
is what the reward server scores with the functions its RewardInfos describe, it gives every item
a RewardStatus, and the learner's pipeline combines the ItemScores of several reward services with
the same `combine` the reward server uses for its functions. A RewardBatch is many items as columns
and BatchScores their scores as columns (the reward server's ScoreBatch, with no per-item objects).

Severity order, least to most severe (an item scored by several functions or services carries the
most severe status any of them gave it):

    OK < INVALID_OUTPUT < ERROR < TIMEOUT

INVALID_OUTPUT (a NaN, a wrong-length list) means the function ran and answered badly; ERROR means
it raised; TIMEOUT means it never answered, which also cost the reward server a worker restart
and may hide whatever else was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rlfleet.errors import InvalidRequest
from rlfleet.v1 import common_pb2


class FinishReason(StrEnum):
    """Why generation of one completion stopped (values are what metrics and reward functions see)."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


class RewardStatus(StrEnum):
    """Outcome of scoring one item; `severity` orders them (see the module docstring)."""

    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"
    INVALID_OUTPUT = "invalid_output"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {RewardStatus.OK: 0, RewardStatus.INVALID_OUTPUT: 1, RewardStatus.ERROR: 2, RewardStatus.TIMEOUT: 3}


_OK = RewardStatus.OK


def worst(statuses: Iterable[RewardStatus]) -> RewardStatus:
    """The most severe of `statuses` (OK when there are none)."""
    return max(statuses, key=_SEVERITY.__getitem__, default=RewardStatus.OK)


_FINISH_TO_PB = {FinishReason.STOP: common_pb2.FINISH_REASON_STOP, FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
                 FinishReason.ABORT: common_pb2.FINISH_REASON_ABORT}
_FINISH_FROM_PB = {v: k for k, v in _FINISH_TO_PB.items()}
_STATUS_TO_PB = {RewardStatus.OK: common_pb2.REWARD_STATUS_OK, RewardStatus.TIMEOUT: common_pb2.REWARD_STATUS_TIMEOUT,
                 RewardStatus.ERROR: common_pb2.REWARD_STATUS_ERROR,
                 RewardStatus.INVALID_OUTPUT: common_pb2.REWARD_STATUS_INVALID_OUTPUT}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


def finish_reason_from_proto(value: int, where: str = "finish_reason") -> FinishReason:
    """The wire value as a FinishReason; unspecified or unknown values raise InvalidRequest naming `where`."""
    if value not in _FINISH_FROM_PB:
        raise InvalidRequest(where, f"unknown or unspecified finish reason {value}")
    return _FINISH_FROM_PB[value]


def finish_reason_to_proto(reason: FinishReason | str) -> int:
    return _FINISH_TO_PB[reason]


def reward_status_from_proto(value: int, where: str = "reward_status") -> RewardStatus:
    """The wire value as a RewardStatus; unspecified or unknown values raise InvalidRequest naming `where`."""
    if value not in _STATUS_FROM_PB:
        raise InvalidRequest(where, f"unknown or unspecified reward status {value}")
    return _STATUS_FROM_PB[value]


def reward_status_to_proto(status: RewardStatus) -> int:
    return _STATUS_TO_PB[status]


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
class RewardBatch:
    """Items as columns: entry i of every list belongs to item i (all lists have len(prompts) entries)."""

    prompts: list[str]
    completions: list[str]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    """Dataset columns, JSON-decoded, one value per item (None where an item has none); `answer` is the gold answer."""
    completion_tokens: list[int] | None = None
    """Completion lengths in tokens (0 = unknown); None = all unknown."""
    finish_reasons: list[FinishReason | None] | None = None
    """Why generation stopped (None = unknown); None = all unknown."""

    def __len__(self) -> int:
        return len(self.prompts)

    def __reduce__(self):  # a plain tuple pickles faster than dataclass state
        return RewardBatch, (self.prompts, self.completions, self.columns, self.completion_tokens, self.finish_reasons)

    @classmethod
    def from_items(cls, items: Sequence[RewardItem]) -> RewardBatch:
        """The items as columns; an item without a column some other item has gets None there (as TRL passes it)."""
        names = dict.fromkeys(key for item in items for key in item.columns)
        finish = [item.finish_reason for item in items]
        tokens = [item.completion_tokens for item in items]
        return cls([item.prompt for item in items], [item.completion for item in items],
                   {name: [item.columns.get(name) for item in items] for name in names},
                   tokens if any(tokens) else None, finish if any(r is not None for r in finish) else None)

    def slice(self, start: int, stop: int) -> RewardBatch:
        """Items start..stop-1 as a batch of their own."""
        return RewardBatch(self.prompts[start:stop], self.completions[start:stop],
                           {name: values[start:stop] for name, values in self.columns.items()},
                           None if self.completion_tokens is None else self.completion_tokens[start:stop],
                           None if self.finish_reasons is None else self.finish_reasons[start:stop])


@dataclass(frozen=True)
class RewardInfo:
    """One reward function a reward service runs, as its ListRewards describes it."""

    name: str
    """Component name, as in ItemScore.components and metric labels."""
    weight: float
    kind: str
    """"function" (from the user's script), "builtin" or "model"."""
    description: str = ""


@dataclass(slots=True)
class ItemScore:
    """The score of one item: weighted total, unweighted components, status, and the cause when not OK."""

    reward: float
    components: dict[str, float]
    status: RewardStatus = RewardStatus.OK
    error: str = ""


@dataclass(slots=True)
class BatchScores:
    """The scores of a RewardBatch as columns, one entry per item; the causes only for items that are not OK."""

    rewards: list[float]
    """Weighted total per item (0.0 where the status is not OK)."""
    statuses: list[RewardStatus]
    components: dict[str, list[float]]
    """Unweighted values per component name; NaN where the component does not apply to the item (it returned
    None, or failed on it). NaN rather than None: the wire carries packed floats, and a present value is finite."""
    errors: dict[int, str] = field(default_factory=dict)
    """Item index -> cause, for the items whose status is not OK."""

    def __len__(self) -> int:
        return len(self.rewards)

    def item(self, i: int) -> ItemScore:
        """Item i's score, as `combine` would give it."""
        components = {name: values[i] for name, values in self.components.items() if values[i] == values[i]}
        return ItemScore(self.rewards[i], components, self.statuses[i], self.errors.get(i, ""))

    def items(self) -> list[ItemScore]:
        return [self.item(i) for i in range(len(self.rewards))]


def combine(parts: Iterable[tuple[str, float, ItemScore]]) -> ItemScore:
    """One item's score over named, weighted parts (a service's reward functions, or a learner's reward services).

    The total is the weighted sum of the parts' rewards, reported only when every part is OK (else
    0.0: a made-up reward is never trained on); the status is the most severe part's, with every
    failed part's error named. Components keep their names; one that two parts share is kept as
    `part/name` for the later part. A non-finite total (e.g. 1e308 * 10) is INVALID_OUTPUT.
    """
    # The reward server calls this once per item of every request: the OK path is kept to one loop.
    components: dict[str, float] = {}
    failed: list[tuple[str, ItemScore]] = []
    total = 0.0
    for name, weight, score in parts:
        if score.status is not _OK:
            failed.append((name, score))
        total += weight * score.reward
        for key, value in score.components.items():
            components[f"{name}/{key}" if key in components else key] = value
    if failed:
        status = worst(score.status for _, score in failed)
        return ItemScore(0.0, components, status, "; ".join(f"{n}: {s.error or s.status.name}" for n, s in failed))
    if not math.isfinite(total):
        return ItemScore(0.0, components, RewardStatus.INVALID_OUTPUT, f"weighted total {total} is not finite")
    return ItemScore(total, components)
