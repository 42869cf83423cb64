"""Rejection sampling: the best completions of each group as supervised data, with an NLL term on them."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from learner.algos.masked import masked


def top_of_each_group(rewards: Tensor, group_ids: Tensor, fraction: float, min_reward: float | None = None) -> Tensor:
    """keep[i] = sample i is among the ceil(fraction * n) highest rewards of its group of n.  # [B] bool

    Rejection-sampling fine-tuning (Touvron et al. 2023, Llama 2, section 3.2.3; Dong et al. 2023, RAFT):
    sample k completions per prompt, keep the best as supervised targets. Ties go to the earlier
    sample. With `min_reward`, a kept sample must also score at least that, so a group that is all
    wrong gives no target.
    """
    keep = torch.zeros_like(rewards, dtype=torch.bool)  # [B]
    for group in torch.unique(group_ids):
        members = torch.nonzero(group_ids == group).squeeze(-1)  # [n]
        count = math.ceil(fraction * members.numel())
        order = torch.sort(rewards[members], descending=True, stable=True).indices  # [n]
        keep[members[order[:count]]] = True
    if min_reward is not None:
        keep &= rewards >= min_reward
    return keep  # [B]


def sft_mask(mask: Tensor, rewards: Tensor, group_ids: Tensor, fraction: float, min_reward: float | None = None
             ) -> Tensor:
    """The tokens the NLL term imitates: the trained tokens (`mask`) of each group's kept samples.  # [B, T]

    `mask` is the batch's loss mask, so a multi-turn trajectory contributes its model turns only: the
    environment's observations (loss_mask 0) are never imitated, as they are never in the policy loss.
    """
    keep = top_of_each_group(rewards, group_ids, fraction, min_reward)  # [B]
    return mask * keep[:, None].to(mask.dtype)  # [B, T]


def nll_loss(logprobs: Tensor, mask: Tensor, num_tokens: float | None = None) -> Tensor:
    """Token-mean negative log-likelihood of the masked tokens (mask = trained tokens of kept samples):

        L = -sum_{b,t} m_{b,t} * logprobs_{b,t} / N,    N = num_tokens or max(sum m, 1)

    N is the kept tokens of the whole mini-batch, so micro-batch losses add up to its loss. Positions
    with mask 0 contribute nothing, even NaN.  # []
    """
    denominator = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
    return -masked(logprobs, mask).sum() / denominator  # []
