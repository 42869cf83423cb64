"""Truncated importance sampling between the generator's and the learner's numerics (Yao et al. 2025)."""

from __future__ import annotations

import torch
from torch import Tensor


def tis_weight(old_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float | None) -> Tensor:
    """w = min(exp(old_logprobs - behaviour_logprobs), cap), detached; 1 everywhere when cap is None.

    Yao et al. 2025 ("Your efficient RL framework secretly brings you off-policy RL training"):
    vLLM samples from pi_vllm, not from the learner's pi_old, so the per-token policy-gradient loss is
    reweighted by pi_old / pi_vllm, truncated at `cap` to bound its variance.  # [B, T]
    """
    if cap is None:
        return torch.ones_like(old_logprobs)
    return (old_logprobs - behaviour_logprobs).detach().exp().clamp(max=cap)  # [B, T]
