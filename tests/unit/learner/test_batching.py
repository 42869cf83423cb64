"""Rollout batch -> padded tensors and token-budget micro-batches, with hand-built cases."""

from __future__ import annotations

import pytest
import torch

from learner.batching import micro_batches, minibatch_rows, pad_batch
from rlfleet.errors import InvalidRequest
from rlfleet.rollouts import Batch, FinishReason, Group, Sample


def _sample(tokens, mask=None, ref=None):
    return Sample(token_ids=tokens, logprobs=[-1.0] * len(tokens), finish_reason=FinishReason.STOP,
                  reward=float(len(tokens)), loss_mask=mask, ref_logprobs=ref)


def _batch():
    # group 0: prompt [5, 6, 7] with completions [10, 11] and [12]; group 1: prompt [8] with [13, 14, 15]
    return Batch("b", [Group("p0", [5, 6, 7], [_sample([10, 11]), _sample([12], mask=[False])], policy_version=3),
                       Group("p1", [8], [_sample([13, 14, 15])], policy_version=1)])


def test_pad_batch_aligns_completion_tokens_with_the_predicting_position():
    padded = pad_batch(_batch(), pad_id=0)
    # inputs are prompt + completion[:-1]: [5,6,7,10], [5,6,7], [8,13,14]
    assert padded.input_ids.tolist() == [[5, 6, 7, 10], [5, 6, 7, 0], [8, 13, 14, 0]]
    assert padded.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0]]
    # token t of a completion is predicted at index len(prompt) - 1 + t: 2, 3 | 2 | 0, 1, 2
    assert padded.positions.tolist() == [[2, 3, 0], [2, 0, 0], [0, 1, 2]]
    assert padded.targets.tolist() == [[10, 11, 0], [12, 0, 0], [13, 14, 15]]
    assert padded.mask.tolist() == [[1, 1, 0], [0, 0, 0], [1, 1, 1]]
    assert padded.group_ids.tolist() == [0, 0, 1]
    assert padded.policy_versions.tolist() == [3, 3, 1]
    assert padded.ref_logprobs is None and padded.advantages is None  # not every sample has them


def test_select_trims_to_the_rows_longest_input_and_completion():
    part = pad_batch(_batch(), pad_id=0).select(torch.tensor([1]))
    assert part.input_ids.tolist() == [[5, 6, 7]]
    assert part.targets.tolist() == [[12]]


def test_too_long_sample_names_its_field():
    with pytest.raises(InvalidRequest, match=r"^groups\[0\]\.samples\[0\]\.completion\.token_ids"):
        pad_batch(_batch(), pad_id=0, max_len=4)  # group 0 sample 0: 3 + 2 = 5 tokens > 4


def test_micro_batches_respect_the_token_budget_longest_first():
    lengths = torch.tensor([4, 9, 2, 3, 8])
    parts = micro_batches(torch.arange(5), lengths, token_budget=16)
    # longest first 9, 8, 4, 3, 2: [9] (+8 -> 2*9 = 18 > 16), [8, 4] (2*8 = 16; +3 -> 3*8 = 24), [3, 2] (2*3 = 6)
    assert [p.tolist() for p in parts] == [[1], [4, 0], [3, 2]]


def test_a_row_longer_than_the_budget_is_its_own_micro_batch():
    parts = micro_batches(torch.tensor([0, 1]), torch.tensor([50, 3]), token_budget=10)
    assert [p.tolist() for p in parts] == [[0], [1]]


def test_minibatches_split_a_seeded_shuffle_evenly():
    rows = minibatch_rows(7, 3, torch.Generator().manual_seed(0))
    assert [len(r) for r in rows] == [3, 2, 2]
    assert sorted(torch.cat(rows).tolist()) == list(range(7))
    again = minibatch_rows(7, 3, torch.Generator().manual_seed(0))
    assert [r.tolist() for r in rows] == [r.tolist() for r in again]
