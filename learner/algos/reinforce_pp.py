"""REINFORCE++ advantage: token returns normalised over the whole batch (Hu 2025)."""

from __future__ import annotations

import torch
from torch import Tensor

from learner.algos.config import ReinforcePPAdvantage
from learner.algos.masked import masked, masked_whiten
from learner.algos.types import AdvantageInput, AdvantageOutput


def reinforce_pp_advantages(inp: AdvantageInput, config: ReinforcePPAdvantage) -> AdvantageOutput:
    """A_{i,t} = (G_{i,t} - mean(G)) / (std(G) + eps), mean and std over every masked token of the batch.

    Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models":
    the return with gamma = 1 is G_{i,t} = r_i + sum_{s >= t} m_{i,s} * token_rewards_{i,s} (the outcome
    reward sits on the last token, so every token's return contains it). No group baseline: the
    normalisation is global, so call this on the whole global batch, not per micro-batch.
    """
    returns = inp.rewards[:, None] + token_rewards_to_go(inp)  # [B, T]
    return AdvantageOutput(advantages=masked_whiten(returns, inp.mask, config.eps))  # [B, T]


def token_rewards_to_go(inp: AdvantageInput) -> Tensor:
    """sum_{s >= t} m_s * token_rewards_s: the per-token part of the undiscounted return (0 without them).  # [B, T]"""
    if inp.token_rewards is None:
        return torch.zeros_like(inp.mask)
    token_rewards = masked(inp.token_rewards, inp.mask)  # [B, T]
    return token_rewards.flip(-1).cumsum(-1).flip(-1)  # [B, T]
