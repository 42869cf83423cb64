"""REINFORCE++ advantage: token returns normalised over the whole batch (Hu 2025)."""

from __future__ import annotations

import torch

from learner.algos.config import ReinforcePPAdvantage
from learner.algos.masked import masked_whiten
from learner.algos.types import AdvantageInput, AdvantageOutput


def reinforce_pp_advantages(inp: AdvantageInput, config: ReinforcePPAdvantage) -> AdvantageOutput:
    """A_{i,t} = (G_{i,t} - mean(G)) / (std(G) + eps), mean and std over every masked token of the batch.

    Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models":
    the return with gamma = 1 is G_{i,t} = r_i + sum_{s >= t} m_{i,s} * token_rewards_{i,s} (the outcome
    reward sits on the last token, so every token's return contains it). No group baseline: the
    normalisation is global, so call this on the whole global batch, not per micro-batch.
    """
    token_rewards = inp.token_rewards * inp.mask if inp.token_rewards is not None else torch.zeros_like(inp.mask)  # [B, T]
    to_go = token_rewards.flip(-1).cumsum(-1).flip(-1)  # [B, T] sum_{s >= t}
    returns = inp.rewards[:, None] + to_go  # [B, T]
    return AdvantageOutput(advantages=masked_whiten(returns, inp.mask, config.eps))  # [B, T]
