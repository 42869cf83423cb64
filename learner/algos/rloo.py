"""RLOO advantage: reward minus the leave-one-out mean of its group (Ahmadian et al. 2024)."""

from __future__ import annotations

from learner.algos.config import RLOOAdvantage
from learner.algos.groups import group_stats
from learner.algos.types import AdvantageInput, AdvantageOutput


def rloo_advantages(inp: AdvantageInput, config: RLOOAdvantage) -> AdvantageOutput:
    """A_{i,t} = r_i - 1/(k-1) * sum_{j != i} r_j = k/(k-1) * (r_i - mean(r_group)), group size k.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
    Human Feedback in LLMs". A group of one has no baseline and gets 0.
    r_i = rewards + masked sum of token_rewards.
    """
    rewards = inp.sequence_rewards()  # [B]
    stats = group_stats(rewards, inp.group_ids)
    scale = stats.size / (stats.size - 1).clamp(min=1)  # [B]
    advantages = scale * (rewards - stats.mean)  # [B]
    return AdvantageOutput(advantages=advantages[:, None] * inp.mask)  # [B, T]
