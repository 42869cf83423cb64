"""Rollout batch -> padded tensors, and token-budget micro-batches for gradient accumulation."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from rlfleet.errors import InvalidRequest
from rlfleet.rollouts import Batch


@dataclass
class PaddedBatch:
    """Every completion of a rollout batch as right-padded tensors; row b is one sample.

    Row b's model input is `prompt_ids + token_ids[:-1]`; completion token t is predicted by the
    hidden state at `positions[b, t] = len(prompt_ids) - 1 + t`.
    """

    input_ids: Tensor            # [B, L] long, pad_id after the row's input
    attention_mask: Tensor       # [B, L] long
    positions: Tensor            # [B, T] long; hidden-state index predicting completion token t (0 on padding)
    targets: Tensor              # [B, T] long; completion token ids (0 on padding)
    mask: Tensor                 # [B, T] float; 1 on completion tokens that are trained on
    behaviour_logprobs: Tensor   # [B, T] float; generator's log-probs (0 on padding)
    ref_logprobs: Tensor | None  # [B, T] float, when every sample carries them
    advantages: Tensor | None    # [B, T] float, when every sample carries them
    rewards: Tensor              # [B] float
    group_ids: Tensor            # [B] long
    truncated: Tensor            # [B] bool; finish_reason == length
    policy_versions: Tensor      # [B] long; version that generated the row
    input_lengths: Tensor        # [B] long; real tokens in input_ids
    completion_lengths: Tensor   # [B] long; completion tokens of the row

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: Tensor) -> PaddedBatch:
        """The sub-batch of `rows` ([R] long), trimmed to its longest input and completion."""
        picked = {f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                  for f in fields(self)}
        width = max(int(picked["input_lengths"].max()), 1)
        completion = max(int(picked["completion_lengths"].max()), 1)
        for name in ("input_ids", "attention_mask"):
            picked[name] = picked[name][:, :width]
        for name in ("positions", "targets", "mask", "behaviour_logprobs", "ref_logprobs", "advantages"):
            if picked[name] is not None:
                picked[name] = picked[name][:, :completion]
        return PaddedBatch(**picked)


def _pad(rows: list[list], width: int, value, dtype: torch.dtype) -> Tensor:
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        if row:
            out[i, :len(row)] = torch.tensor(row, dtype=dtype)
    return out


def pad_batch(batch: Batch, pad_id: int, max_len: int | None = None) -> PaddedBatch:
    """Pads every sample of `batch`; raises InvalidRequest naming a sample longer than `max_len`."""
    inputs, targets, masks, behaviour, refs, advantages = [], [], [], [], [], []
    rewards, group_ids, truncated, versions = [], [], [], []
    for g, group in enumerate(batch.groups):
        for s, sample in enumerate(group.samples):
            length = len(group.prompt_ids) + len(sample.token_ids)
            if max_len is not None and length > max_len:
                raise InvalidRequest(f"groups[{g}].samples[{s}].completion.token_ids",
                                     f"prompt + completion is {length} tokens, the model takes {max_len}")
            inputs.append(group.prompt_ids + sample.token_ids[:-1])
            targets.append(sample.token_ids)
            masks.append([float(m) for m in sample.loss_mask] if sample.loss_mask else [1.0] * len(sample.token_ids))
            behaviour.append(sample.logprobs)
            refs.append(sample.ref_logprobs)
            advantages.append(sample.advantages)
            rewards.append(sample.reward)
            group_ids.append(g)
            truncated.append(sample.truncated)
            versions.append(group.policy_version)
    width = max(len(t) for t in targets) or 1
    input_width = max(len(i) for i in inputs)
    starts = torch.tensor([len(g.prompt_ids) - 1 for g in batch.groups for _ in g.samples])  # [B]
    lengths = torch.tensor([len(t) for t in targets])  # [B]
    steps = torch.arange(width)  # [T]
    valid = steps[None, :] < lengths[:, None]  # [B, T]
    return PaddedBatch(
        input_ids=_pad(inputs, input_width, pad_id, torch.long),
        attention_mask=_pad([[1] * len(i) for i in inputs], input_width, 0, torch.long),
        positions=torch.where(valid, starts[:, None] + steps[None, :], 0),
        targets=_pad(targets, width, 0, torch.long),
        mask=_pad(masks, width, 0.0, torch.float32),
        behaviour_logprobs=_pad(behaviour, width, 0.0, torch.float32),
        ref_logprobs=_pad(refs, width, 0.0, torch.float32) if all(r is not None for r in refs) else None,
        advantages=_pad(advantages, width, 0.0, torch.float32) if all(a is not None for a in advantages) else None,
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_ids=torch.tensor(group_ids, dtype=torch.long),
        truncated=torch.tensor(truncated, dtype=torch.bool),
        policy_versions=torch.tensor(versions, dtype=torch.long),
        input_lengths=torch.tensor([len(i) for i in inputs], dtype=torch.long),
        completion_lengths=lengths,
    )


def minibatch_rows(num_rows: int, num_minibatches: int, generator: torch.Generator) -> list[Tensor]:
    """A seeded shuffle of the rows split into `num_minibatches` near-equal parts (fewer if rows run out)."""
    order = torch.randperm(num_rows, generator=generator)  # [B]
    return [part for part in torch.tensor_split(order, min(num_minibatches, num_rows)) if part.numel()]


def micro_batches(rows: Tensor, input_lengths: Tensor, token_budget: int) -> list[Tensor]:
    """Splits `rows` into micro-batches whose padded size (rows x longest input) fits `token_budget`.

    Rows are taken longest first so that similar lengths share a micro-batch (less padding); a row
    longer than the budget forms a micro-batch of its own.
    """
    lengths = input_lengths[rows]  # [R]
    order = rows[torch.argsort(lengths, descending=True, stable=True)]  # [R]
    out: list[list[int]] = []
    longest = 0
    for row in order.tolist():
        length = int(input_lengths[row])
        if out and max(longest, length) * (len(out[-1]) + 1) <= token_budget:
            out[-1].append(row)
            longest = max(longest, length)
        else:
            out.append([row])
            longest = length
    return [torch.tensor(m, dtype=torch.long) for m in out]
