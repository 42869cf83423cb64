"""DAPO's dynamic sampling (uniform groups dropped) and overlong filtering (truncated rows masked)."""

from __future__ import annotations

import torch

from learner.algos import filter_uniform_groups, overlong_mask


def test_groups_with_equal_rewards_are_dropped():
    # group 0: all 1 -> drop; group 1: [0, 1] -> keep; group 2: all 0.5 -> drop; group 5: one sample -> drop
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0, 0.5, 3.0])
    group_ids = torch.tensor([0, 1, 0, 2, 1, 2, 5])
    keep = filter_uniform_groups(rewards, group_ids)
    assert keep.tolist() == [False, True, False, False, True, False, False]


def test_empty_batch():
    assert filter_uniform_groups(torch.zeros(0), torch.zeros(0, dtype=torch.long)).numel() == 0


def test_overlong_rows_lose_their_loss_mask():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    out = overlong_mask(torch.tensor([False, True, False]), mask)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
