"""Per-group reward statistics: completions of one prompt share a group id (any order, any group size)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GroupStats:
    """Statistics of each sample's group, gathered back onto the sample."""

    mean: Tensor  # [B] mean reward of the sample's group
    std: Tensor  # [B] Bessel-corrected std of the group (0 for a group of one)
    size: Tensor  # [B] number of samples in the group, as the rewards' dtype


def group_stats(rewards: Tensor, group_ids: Tensor) -> GroupStats:
    """Mean, std and size of every sample's group.

    The std is Bessel-corrected (divides by n - 1), as `torch.std` in TRL's and verl's GRPO.
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)  # [B], [G]
    counts = counts.to(rewards.dtype)  # [G]
    sums = torch.zeros_like(counts).index_add_(0, inverse, rewards)  # [G]
    mean = (sums / counts)[inverse]  # [B]
    squares = torch.zeros_like(counts).index_add_(0, inverse, (rewards - mean) ** 2)  # [G]
    std = (squares / (counts - 1).clamp(min=1)).sqrt()[inverse]  # [B]
    return GroupStats(mean=mean, std=std, size=counts[inverse])
