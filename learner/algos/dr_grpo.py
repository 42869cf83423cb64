"""Dr.GRPO advantage: group-centred outcome reward without the std (Liu et al. 2025)."""

from __future__ import annotations

from learner.algos.config import DrGRPOAdvantage
from learner.algos.groups import group_stats
from learner.algos.types import AdvantageInput, AdvantageOutput


def dr_grpo_advantages(inp: AdvantageInput, config: DrGRPOAdvantage) -> AdvantageOutput:
    """A_{i,t} = r_i - mean(r_group) on every trained token of completion i.

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective":
    dividing by std(r_group) over-weights easy and hard questions, and GRPO's 1/|o_i| length
    normaliser favours long wrong answers. Dr.GRPO removes both; the second half is the loss's job:
    configure it with `aggregation = "seq_mean_token_sum"` and `seq_sum_normaliser = max_tokens`
    (the generator's max_tokens), which divides every sequence's token sum by the same constant.
    r_i = rewards + masked sum of token_rewards.
    """
    rewards = inp.sequence_rewards()  # [B]
    advantages = rewards - group_stats(rewards, inp.group_ids).mean  # [B]
    return AdvantageOutput(advantages=advantages[:, None] * inp.mask)  # [B, T]
