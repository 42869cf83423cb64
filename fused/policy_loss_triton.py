"""Triton twin of the fused policy-loss kernels (CUDA; on the CPU only under TRITON_INTERPRET=1).

Forward: one program per sequence streams its T tokens once and writes seven masked sums (`RowStats`).
Backward: one program per (sequence, token block) recomputes the per-token terms and writes
d loss / d logprobs. Nothing [B, T]-sized is kept between the two besides the inputs themselves.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused.policy_loss_types import LossTerms, RowStats, TokenInputs

_STATS = 7  # fields of RowStats, in declaration order


@triton.jit
def _token_terms(lp_ptr, old_ptr, beh_ptr, adv_ptr, mask_ptr, ref_ptr, offs, ok, clip_low, clip_high, tis_cap,
                 dual_clip, HAS_TIS: tl.constexpr, HAS_REF: tl.constexpr, HAS_DUAL: tl.constexpr):
    """Loads one token block and returns mask, advantages, ratio, tis, pg, kl, "pg depends on lp", lp, ref."""
    mask = tl.load(mask_ptr + offs, mask=ok, other=0.0)
    trained = mask != 0.0
    # Untrained tokens read as 0: padding may hold inf/NaN, and 0 * inf is NaN.
    lp = tl.where(trained, tl.load(lp_ptr + offs, mask=ok, other=0.0), 0.0)
    old = tl.where(trained, tl.load(old_ptr + offs, mask=ok, other=0.0), 0.0)
    adv = tl.where(trained, tl.load(adv_ptr + offs, mask=ok, other=0.0), 0.0)
    ratio = tl.exp(lp - old)
    clipped = tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
    if HAS_TIS:
        beh = tl.where(trained, tl.load(beh_ptr + offs, mask=ok, other=0.0), 0.0)
        tis = tl.minimum(tl.exp(old - beh), tis_cap)
    else:
        tis = tl.full(ratio.shape, 1.0, tl.float32)
    surrogate = ratio * adv
    clipped_surrogate = clipped * adv
    pg = -tl.minimum(surrogate, clipped_surrogate)
    live = surrogate <= clipped_surrogate
    if HAS_DUAL:
        cap = -adv * dual_clip
        capped = (adv < 0.0) & (pg > cap)
        pg = tl.where(capped, cap, pg)
        live = live & (capped == 0)
    pg = pg * tis
    if HAS_REF:
        ref = tl.where(trained, tl.load(ref_ptr + offs, mask=ok, other=0.0), 0.0)
        kl = tl.exp(ref - lp) - (ref - lp) - 1.0
    else:
        ref = lp
        kl = tl.zeros(ratio.shape, tl.float32)
    return mask, adv, ratio, tis, pg, kl, live, lp, ref


@triton.jit
def _row_stats_kernel(lp_ptr, old_ptr, beh_ptr, adv_ptr, mask_ptr, ref_ptr, out_ptr, B, T,
                      clip_low, clip_high, tis_cap, dual_clip, kl_coef,
                      HAS_TIS: tl.constexpr, HAS_REF: tl.constexpr, HAS_DUAL: tl.constexpr, BLOCK_T: tl.constexpr):
    """Seven masked sums of one sequence -> out[:, row] (RowStats field order)."""
    row = tl.program_id(0)
    acc_loss = tl.zeros([BLOCK_T], tl.float32)
    acc_pg = tl.zeros([BLOCK_T], tl.float32)
    acc_kl = tl.zeros([BLOCK_T], tl.float32)
    acc_mask = tl.zeros([BLOCK_T], tl.float32)
    acc_low = tl.zeros([BLOCK_T], tl.float32)
    acc_high = tl.zeros([BLOCK_T], tl.float32)
    acc_dual = tl.zeros([BLOCK_T], tl.float32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        ok = ts < T
        mask, adv, ratio, tis, pg, kl, _live, _lp, _ref = _token_terms(
            lp_ptr, old_ptr, beh_ptr, adv_ptr, mask_ptr, ref_ptr, row.to(tl.int64) * T + ts, ok,
            clip_low, clip_high, tis_cap, dual_clip, HAS_TIS, HAS_REF, HAS_DUAL)
        acc_loss += (pg + kl_coef * kl) * mask
        acc_pg += pg * mask
        acc_kl += kl * mask
        acc_mask += mask
        acc_low += tl.where((ratio < 1.0 - clip_low) & (adv < 0.0), mask, 0.0)
        acc_high += tl.where((ratio > 1.0 + clip_high) & (adv > 0.0), mask, 0.0)
        if HAS_DUAL:
            acc_dual += tl.where((ratio > dual_clip) & (adv < 0.0), mask, 0.0)
    tl.store(out_ptr + 0 * B + row, tl.sum(acc_loss, axis=0))
    tl.store(out_ptr + 1 * B + row, tl.sum(acc_pg, axis=0))
    tl.store(out_ptr + 2 * B + row, tl.sum(acc_kl, axis=0))
    tl.store(out_ptr + 3 * B + row, tl.sum(acc_mask, axis=0))
    tl.store(out_ptr + 4 * B + row, tl.sum(acc_low, axis=0))
    tl.store(out_ptr + 5 * B + row, tl.sum(acc_high, axis=0))
    tl.store(out_ptr + 6 * B + row, tl.sum(acc_dual, axis=0))


@triton.jit
def _token_grads_kernel(lp_ptr, old_ptr, beh_ptr, adv_ptr, mask_ptr, ref_ptr, scale_ptr, grad_ptr, T,
                        clip_low, clip_high, tis_cap, dual_clip, kl_coef,
                        HAS_TIS: tl.constexpr, HAS_REF: tl.constexpr, HAS_DUAL: tl.constexpr, BLOCK_T: tl.constexpr):
    """grad[row, block] = row_scale[row] * mask * d per_token / d lp."""
    row = tl.program_id(0)
    ts = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = ts < T
    offs = row.to(tl.int64) * T + ts
    mask, adv, ratio, tis, _pg, _kl, live, lp, ref = _token_terms(
        lp_ptr, old_ptr, beh_ptr, adv_ptr, mask_ptr, ref_ptr, offs, ok, clip_low, clip_high, tis_cap, dual_clip,
        HAS_TIS, HAS_REF, HAS_DUAL)
    # The clipped and dual-capped branches are constant in lp; at a tie of min() both slopes agree.
    d_token = tl.where(live, -adv * ratio * tis, 0.0)
    if HAS_REF:
        d_token += kl_coef * (1.0 - tl.exp(ref - lp))
    scale = tl.load(scale_ptr + row)
    tl.store(grad_ptr + offs, d_token * mask * scale, mask=ok)


def _block_t(t: int) -> int:
    return min(1024, max(16, triton.next_power_of_2(t)))


def _launch_args(x: TokenInputs, terms: LossTerms) -> tuple[list, dict]:
    has_tis = x.behaviour_logprobs is not None and terms.tis_cap is not None
    has_ref = x.ref_logprobs is not None
    # Absent tensors are never read (constexpr flags); any valid pointer fills their slot.
    tensors = [x.logprobs, x.old_logprobs, x.behaviour_logprobs if has_tis else x.logprobs, x.advantages,
               x.mask, x.ref_logprobs if has_ref else x.logprobs]
    flags = dict(HAS_TIS=has_tis, HAS_REF=has_ref, HAS_DUAL=terms.dual_clip is not None,
                 BLOCK_T=_block_t(x.logprobs.shape[1]))
    return tensors, flags


def row_stats(x: TokenInputs, terms: LossTerms) -> RowStats:
    """Masked per-sequence sums of the per-token loss, its pg and kl parts and the clip indicators ([B] each)."""
    b, t = x.logprobs.shape
    out = torch.zeros((_STATS, b), dtype=torch.float32, device=x.logprobs.device)   # [7, B]
    if b and t:
        tensors, flags = _launch_args(x, terms)
        _row_stats_kernel[(b,)](*tensors, out, b, t, terms.clip_low, terms.clip_high, terms.tis_cap or 1.0,
                                terms.dual_clip or 1.0, terms.kl_coef, **flags)
    return RowStats(*out.unbind(0))


def token_grads(x: TokenInputs, terms: LossTerms, row_scale: Tensor) -> Tensor:
    """d loss / d logprobs [B, T] for loss = sum_b row_scale[b] * sum_t per_token * mask."""
    b, t = x.logprobs.shape
    grad = torch.zeros_like(x.logprobs)                                                # [B, T]
    if b and t:
        tensors, flags = _launch_args(x, terms)
        _token_grads_kernel[(b, triton.cdiv(t, flags["BLOCK_T"]))](
            *tensors, row_scale, grad, t, terms.clip_low, terms.clip_high, terms.tis_cap or 1.0,
            terms.dual_clip or 1.0, terms.kl_coef, **flags)
    return grad
