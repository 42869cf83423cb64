"""GSPO: the clipped surrogate on a sequence-level importance ratio (Zheng et al. 2025)."""

from __future__ import annotations

import torch

from learner.algos.config import GSPOLoss
from learner.algos.types import ClipTerms, PolicyLossInput


def gspo_terms(inp: PolicyLossInput, config: GSPOLoss) -> ClipTerms:
    """Per-token form ("GSPO-token" of Zheng et al. 2025, "Group Sequence Policy Optimization") of the sequence-level objective:

        s_i    = exp(1/|y_i| * sum_t m_t * (logprobs_t - old_logprobs_t))    length-normalised sequence ratio
        s_i,t  = sg[s_i] * pi(y_t) / sg[pi(y_t)]                             value s_i, gradient s_i * grad logprob_t
        pg_i,t = max(-A_i,t * s_i,t, -A_i,t * clip(s_i,t, 1 - clip_low, 1 + clip_high))

    Averaged per sequence (aggregation seq_mean_token_mean, which AlgoConfig enforces for gspo) and
    with one advantage per sequence, value and gradient equal those of the sequence-level GSPO. With
    per-token advantages or TIS weights, the gradient is by construction GSPO-token's, not the derivative
    of the loss value (the stop-gradient above).
    """
    mask, logprobs, advantages = inp.mask, inp.logprobs, inp.advantages  # [B, T] each
    lengths = mask.sum(-1).clamp(min=1)  # [B]
    seq_log_ratio = ((logprobs - inp.old_logprobs) * mask).sum(-1) / lengths  # [B]
    ratio = (logprobs - logprobs.detach() + seq_log_ratio.detach()[:, None]).exp()  # [B, T]
    clipped_ratio = ratio.clamp(1 - config.clip_low, 1 + config.clip_high)  # [B, T]
    pg_loss = torch.maximum(-advantages * ratio, -advantages * clipped_ratio)  # [B, T]
    ratio = ratio.detach()
    return ClipTerms(
        pg_loss=pg_loss,
        ratio=ratio,
        clipped_low=(advantages < 0) & (ratio < 1 - config.clip_low),
        clipped_high=(advantages > 0) & (ratio > 1 + config.clip_high),
        dual_clipped=torch.zeros_like(advantages, dtype=torch.bool),
    )
