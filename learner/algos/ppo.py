"""PPO clipped surrogate per token (Schulman et al. 2017) with clip-higher (DAPO) and dual clip (Ye et al. 2020)."""

from __future__ import annotations

import torch

from learner.algos.config import PPOClipLoss
from learner.algos.types import ClipTerms, PolicyLossInput


def ppo_clip_terms(inp: PolicyLossInput, config: PPOClipLoss) -> ClipTerms:
    """Per-token PPO-clip loss, the negated eq. 7 of Schulman et al. 2017 with asymmetric bounds:

        ratio = exp(logprobs - old_logprobs)
        pg    = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))   (clip_high > clip_low:
                DAPO's Clip-Higher, Yu et al. 2025)
        pg    = min(pg, -A * dual_clip)  where A < 0, when dual_clip is set      (Ye et al. 2020, dual-clip PPO:
                a negative advantage's loss is capped at dual_clip * |A| however large the ratio)
    """
    advantages = inp.advantages  # [B, T]
    ratio = (inp.logprobs - inp.old_logprobs).exp()  # [B, T]
    clipped_ratio = ratio.clamp(1 - config.clip_low, 1 + config.clip_high)  # [B, T]
    pg_loss = torch.maximum(-advantages * ratio, -advantages * clipped_ratio)  # [B, T]
    dual_clipped = torch.zeros_like(advantages, dtype=torch.bool)  # [B, T]
    if config.dual_clip is not None:
        dual_clipped = (advantages < 0) & (ratio > config.dual_clip)  # [B, T]
        pg_loss = torch.where(advantages < 0, torch.minimum(pg_loss, -advantages * config.dual_clip), pg_loss)
    ratio = ratio.detach()
    return ClipTerms(
        pg_loss=pg_loss,
        ratio=ratio,
        clipped_low=(advantages < 0) & (ratio < 1 - config.clip_low),
        clipped_high=(advantages > 0) & (ratio > 1 + config.clip_high),
        dual_clipped=dual_clipped,
    )
