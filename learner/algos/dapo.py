"""DAPO's batch filters: dynamic sampling and overlong filtering (Yu et al. 2025)."""

from __future__ import annotations

import torch
from torch import Tensor


def filter_uniform_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """keep[i] = the group of sample i has at least two different rewards.  # [B] bool

    Yu et al. 2025 (DAPO), Dynamic Sampling: a group whose rewards are all equal (all right or
    all wrong) has zero group-relative advantage and only dilutes the batch; the engine drops it and
    draws more groups until the batch holds its configured number of kept groups.
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)  # [B]
    num_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    high = rewards.new_full((num_groups,), -torch.inf).scatter_reduce(0, inverse, rewards, "amax")  # [G]
    low = rewards.new_full((num_groups,), torch.inf).scatter_reduce(0, inverse, rewards, "amin")  # [G]
    return (high > low)[inverse]  # [B]


def overlong_mask(truncated: Tensor, mask: Tensor) -> Tensor:
    """The loss mask with every truncated completion's row zeroed.  # [B, T]

    Yu et al. 2025 (DAPO), Overlong Filtering: a completion cut at max_tokens is not
    necessarily wrong, so its (penalised) reward would be noise; it is excluded from the loss.
    `truncated` [B] bool is finish_reason == length.
    """
    return mask * (~truncated).to(mask.dtype)[:, None]  # [B, T]
