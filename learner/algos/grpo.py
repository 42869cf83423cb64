"""GRPO advantage: group-normalised outcome reward (Shao et al. 2024, DeepSeekMath)."""

from __future__ import annotations

from learner.algos.config import GRPOAdvantage
from learner.algos.groups import group_stats
from learner.algos.types import AdvantageInput, AdvantageOutput


def grpo_advantages(inp: AdvantageInput, config: GRPOAdvantage) -> AdvantageOutput:
    """A_{i,t} = (r_i - mean(r_group)) / (std(r_group) + eps) on every trained token of completion i.

    Shao et al. 2024, DeepSeekMath, eq. 3 with the outcome-supervision advantage of section 4.1.2.
    r_i = rewards + masked sum of token_rewards. std is Bessel-corrected (TRL, verl); with
    scale_by_std=False the division is skipped (Dr.GRPO's advantage). A group of one gets 0.
    """
    rewards = inp.sequence_rewards()  # [B]
    stats = group_stats(rewards, inp.group_ids)
    centered = rewards - stats.mean  # [B]
    advantages = centered / (stats.std + config.eps) if config.scale_by_std else centered  # [B]
    return AdvantageOutput(advantages=advantages[:, None] * inp.mask)  # [B, T]
