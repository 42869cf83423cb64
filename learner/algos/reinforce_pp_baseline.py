"""REINFORCE++-baseline advantage: group-mean baseline, then whitening over the batch (Hu et al. 2025)."""

from __future__ import annotations

from learner.algos.config import ReinforcePPBaselineAdvantage
from learner.algos.groups import group_stats
from learner.algos.masked import masked_whiten
from learner.algos.reinforce_pp import token_rewards_to_go
from learner.algos.types import AdvantageInput, AdvantageOutput


def reinforce_pp_baseline_advantages(inp: AdvantageInput, config: ReinforcePPBaselineAdvantage) -> AdvantageOutput:
    """A_{i,t} = whiten(G_{i,t}) over every masked token of the batch, where

        G_{i,t} = (r_i - mean(r_group)) + sum_{s >= t} m_{i,s} * token_rewards_{i,s}
        whiten(x) = (x - mean(x)) / (std(x) + eps)          population std over the batch's masked tokens

    Hu et al. 2025, "REINFORCE++: An Efficient RLHF Algorithm with Robustness to Both Prompt and
    Reward Models", REINFORCE++-baseline (OpenRLHF's `advantage_estimator = "reinforce_baseline"`):
    the group mean removes the prompt's difficulty from the outcome reward, the global whitening
    (not the group std, as GRPO) keeps the scale stable. The baseline is the mean of the outcome
    rewards only; per-token rewards (a KL folded into the reward) are added afterwards, as OpenRLHF
    does. A group of equal rewards has G = its token rewards before whitening. Call it on the whole batch.
    """
    stats = group_stats(inp.rewards, inp.group_ids)
    centred = inp.rewards - stats.mean  # [B]
    returns = centred[:, None] + token_rewards_to_go(inp)  # [B, T]
    return AdvantageOutput(advantages=masked_whiten(returns, inp.mask, config.eps))  # [B, T]
