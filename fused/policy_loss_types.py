"""Domain types of the fused policy loss: its inputs per token, its hyper-parameters and its per-sequence sums."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class LossTerms:
    """Hyper-parameters of the per-token PPO-clip loss with truncated importance sampling and k3 KL."""

    clip_low: float          # ratio below 1 - clip_low is clipped (for A < 0)
    clip_high: float         # ratio above 1 + clip_high is clipped (for A > 0); DAPO's clip-higher when larger
    tis_cap: float | None    # cap of exp(old - behaviour); None: no importance-sampling correction
    dual_clip: float | None  # dual-clip constant c > 1: the loss of A < 0 tokens is capped at c * |A|; None: off
    kl_coef: float           # weight of the k3 KL to the reference policy


@dataclass(frozen=True)
class TokenInputs:
    """Per-token inputs, all [B, T] fp32 contiguous on one device; only `logprobs` carries a gradient."""

    logprobs: Tensor                    # [B, T] log pi_theta(token), current policy
    old_logprobs: Tensor                # [B, T] log pi_old(token), the policy the ratio is taken against
    behaviour_logprobs: Tensor | None   # [B, T] log-probs of the sampler (vLLM); None without TIS
    advantages: Tensor                  # [B, T]
    mask: Tensor                        # [B, T] float, 0 on prompt and padding
    ref_logprobs: Tensor | None         # [B, T] log pi_ref(token); None without KL


@dataclass(frozen=True)
class RowStats:
    """Masked per-sequence sums, each [B] fp32: what the kernels reduce [B, T] to before aggregation."""

    loss_sum: Tensor       # sum_t (pg + kl_coef * kl) * mask
    pg_sum: Tensor         # sum_t pg * mask
    kl_sum: Tensor         # sum_t kl * mask
    mask_sum: Tensor       # sum_t mask
    clipped_low: Tensor    # sum_t mask where ratio < 1 - clip_low and A < 0
    clipped_high: Tensor   # sum_t mask where ratio > 1 + clip_high and A > 0
    dual_clipped: Tensor   # sum_t mask where ratio > dual_clip and A < 0 (0 without dual clip)
