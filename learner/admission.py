"""What the learner trains on: every rollout batch checked against the model, at PushRollouts and again before each step.

One bad number in an accepted batch used to crash the next training step, and the learner with it:
a token id outside the vocabulary indexes past the embedding, a prompt + completion longer than the
model runs past its positions, a NaN log-prob or advantage makes the loss NaN. `check_batch` refuses
such a batch at the door (InvalidRequest -> INVALID_ARGUMENT naming the group and field);
`keep_valid_groups` runs the same check on every batch the loop is about to train on, whichever
source produced it (the in-learner pipeline too), and drops the groups that fail it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlfleet.errors import InvalidRequest
from rlfleet.rollouts import Batch, Group, Sample

# A log-probability is <= 0; engines round, so a hair above 0 is still one.
_LOGPROB_SLACK = 1e-3


@dataclass(frozen=True)
class BatchLimits:
    """What a rollout must fit: the model's vocabulary and length, and the learner's newest version."""

    vocab_size: int           # every token id < this (the model's embedding rows)
    max_len: int | None       # prompt + completion tokens <= this; None = no limit known
    policy_version: int       # rollouts come from versions 0..this (no producer has a newer one)


def _all_finite(values: list[float]) -> bool:
    # The sum is finite unless a value is not, or the sum overflows: the exact scan runs only then.
    return math.isfinite(sum(values)) or all(math.isfinite(v) for v in values)


def _check_ids(ids: list[int], where: str, vocab_size: int) -> None:
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i, t in enumerate(ids) if not 0 <= t < vocab_size)
        raise InvalidRequest(f"{where}[{bad}]", f"token id {ids[bad]} is outside the vocabulary [0, {vocab_size})")


def _check_floats(values: list[float], where: str, upper: float = math.inf) -> None:
    if not _all_finite(values):
        bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
        raise InvalidRequest(f"{where}[{bad}]", f"must be finite, got {values[bad]}")
    if upper < math.inf and values and max(values) > upper:
        bad = next(i for i, v in enumerate(values) if v > upper)
        raise InvalidRequest(f"{where}[{bad}]", f"a log-probability is <= 0, got {values[bad]}")


def _check_sample(sample: Sample, where: str, prompt_len: int, limits: BatchLimits) -> None:
    n = len(sample.token_ids)
    _check_ids(sample.token_ids, f"{where}.completion.token_ids", limits.vocab_size)
    if limits.max_len is not None and prompt_len + n > limits.max_len:
        raise InvalidRequest(f"{where}.completion.token_ids",
                             f"prompt + completion is {prompt_len + n} tokens, the model takes {limits.max_len}")
    per_token = {"completion.logprobs": sample.logprobs, "ref_logprobs": sample.ref_logprobs,
                 "advantages": sample.advantages, "loss_mask": sample.loss_mask}
    for name, values in per_token.items():
        if values is not None and len(values) != n:
            raise InvalidRequest(f"{where}.{name}", f"length {len(values)} != len(completion.token_ids) = {n}")
    _check_floats(sample.logprobs, f"{where}.completion.logprobs", upper=_LOGPROB_SLACK)
    if sample.ref_logprobs is not None:
        _check_floats(sample.ref_logprobs, f"{where}.ref_logprobs", upper=_LOGPROB_SLACK)
    if sample.advantages is not None:
        _check_floats(sample.advantages, f"{where}.advantages")
    if not math.isfinite(sample.reward):
        raise InvalidRequest(f"{where}.reward", f"must be finite, got {sample.reward}")
    for name, value in sample.reward_components.items():
        if not math.isfinite(value):
            raise InvalidRequest(f"{where}.reward_components[{name!r}]", f"must be finite, got {value}")


def check_group(group: Group, where: str, limits: BatchLimits) -> None:
    """Raises InvalidRequest naming the first field of `group` (at `where`) that a training step cannot take."""
    if not 0 <= group.policy_version <= limits.policy_version:
        raise InvalidRequest(f"{where}.policy_version", f"{group.policy_version} is not a version this learner has "
                                                        f"produced (0 to {limits.policy_version})")
    if not group.prompt_ids:
        raise InvalidRequest(f"{where}.prompt_ids", "must hold at least one token")
    if not group.samples:
        raise InvalidRequest(f"{where}.samples", "must hold at least one sample")
    _check_ids(group.prompt_ids, f"{where}.prompt_ids", limits.vocab_size)
    for s, sample in enumerate(group.samples):
        _check_sample(sample, f"{where}.samples[{s}]", len(group.prompt_ids), limits)


def check_batch(batch: Batch, limits: BatchLimits) -> None:
    """Raises InvalidRequest naming the first group and field that a training step cannot take."""
    if not batch.groups:
        raise InvalidRequest("groups", "must hold at least one group")
    for g, group in enumerate(batch.groups):
        check_group(group, f"groups[{g}]", limits)


def keep_valid_groups(batch: Batch, limits: BatchLimits) -> tuple[Batch | None, list[InvalidRequest]]:
    """`batch` without the groups that fail `check_group` (None when none is left), and why each failed."""
    kept, errors = [], []
    for g, group in enumerate(batch.groups):
        try:
            check_group(group, f"groups[{g}]", limits)
            kept.append(group)
        except InvalidRequest as err:
            errors.append(err)
    if not errors:
        return batch, []
    return (Batch(batch.batch_id, kept, batch.producer) if kept else None), errors
