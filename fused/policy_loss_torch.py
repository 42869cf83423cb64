"""PyTorch twin of the fused policy-loss kernels: per-sequence sums forward, explicit per-token gradient backward.

The same two functions as `policy_loss_triton`, written with torch ops so that the CPU runs the
exact math the CUDA kernels run; `fused.policy_loss` does the aggregation for both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fused.policy_loss_types import LossTerms, RowStats, TokenInputs


def _per_token(x: TokenInputs, terms: LossTerms) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """ratio, tis weight, pg, k3 kl and "pg depends on lp" per token, each [B, T]."""
    ratio = torch.exp(x.logprobs - x.old_logprobs)                                   # [B, T]
    clipped = ratio.clamp(1.0 - terms.clip_low, 1.0 + terms.clip_high)               # [B, T]
    if x.behaviour_logprobs is None or terms.tis_cap is None:
        tis = torch.ones_like(ratio)
    else:
        tis = torch.exp(x.old_logprobs - x.behaviour_logprobs).clamp_max(terms.tis_cap)  # [B, T]
    surrogate, clipped_surrogate = ratio * x.advantages, clipped * x.advantages      # [B, T]
    pg = -torch.minimum(surrogate, clipped_surrogate)                                # [B, T]
    live = surrogate <= clipped_surrogate                                            # [B, T]
    if terms.dual_clip is not None:
        cap = -x.advantages * terms.dual_clip                                        # [B, T] dual clip, Ye et al. 2020
        capped = (x.advantages < 0) & (pg > cap)                                     # [B, T]
        pg, live = torch.where(capped, cap, pg), live & ~capped
    if x.ref_logprobs is None:
        kl = torch.zeros_like(ratio)
    else:
        delta = x.ref_logprobs - x.logprobs                                          # [B, T]
        kl = torch.exp(delta) - delta - 1.0                                          # k3, Schulman (2020)
    return ratio, tis, pg * tis, kl, live


def _masked(values: Tensor, mask: Tensor) -> Tensor:
    # where(), not a product: padding may hold inf/NaN log-probs and 0 * inf is NaN.
    return torch.where(mask != 0, values * mask, 0.0)


def row_stats(x: TokenInputs, terms: LossTerms) -> RowStats:
    """Masked per-sequence sums of the per-token loss, its pg and kl parts and the clip indicators."""
    ratio, _tis, pg, kl, _live = _per_token(x, terms)
    low = (ratio < 1.0 - terms.clip_low) & (x.advantages < 0)                        # [B, T]
    high = (ratio > 1.0 + terms.clip_high) & (x.advantages > 0)                      # [B, T]
    dual_clip = terms.dual_clip if terms.dual_clip is not None else float("inf")
    dual = (ratio > dual_clip) & (x.advantages < 0)                                  # [B, T]
    return RowStats(
        loss_sum=_masked(pg + terms.kl_coef * kl, x.mask).sum(dim=1),
        pg_sum=_masked(pg, x.mask).sum(dim=1),
        kl_sum=_masked(kl, x.mask).sum(dim=1),
        mask_sum=x.mask.sum(dim=1),
        clipped_low=_masked(low.float(), x.mask).sum(dim=1),
        clipped_high=_masked(high.float(), x.mask).sum(dim=1),
        dual_clipped=_masked(dual.float(), x.mask).sum(dim=1),
    )


def token_grads(x: TokenInputs, terms: LossTerms, row_scale: Tensor) -> Tensor:
    """d loss / d logprobs [B, T], where loss = sum_b row_scale[b] * sum_t per_token[b, t] * mask[b, t]."""
    ratio, tis, _pg, _kl, live = _per_token(x, terms)
    # d(ratio * A)/d lp = ratio * A; the clipped and dual-capped branches are constant in lp.
    d_per_token = torch.where(live, -x.advantages * ratio * tis, 0.0)                # [B, T]
    if x.ref_logprobs is not None:
        d_per_token = d_per_token + terms.kl_coef * (1.0 - torch.exp(x.ref_logprobs - x.logprobs))
    return _masked(d_per_token, x.mask) * row_scale[:, None]
