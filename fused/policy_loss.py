"""Fused policy loss over per-token log-probs: PPO-clip with TIS and k3 KL, aggregated in one pass.

Per token (all [B, T]), with r = exp(lp - old):
    tis = min(exp(old - behaviour), tis_cap)            (1 without a cap; a constant, not differentiated)
    pg  = -min(r * A, clamp(r, 1 - clip_low, 1 + clip_high) * A)          (Schulman et al. 2017; DAPO clip-higher)
    pg  = min(pg, dual_clip * |A|) where A < 0, with dual_clip set         (Ye et al. 2020, dual-clip PPO)
    pg  = pg * tis
    kl  = exp(ref - lp) - (ref - lp) - 1                (k3 estimator, Schulman 2020 "Approximating KL divergence")
    per_token = pg + kl_coef * kl
A kernel reduces [B, T] to masked per-sequence sums (`RowStats`); the loss is sum_b row_scale[b] * those
sums, so backward is one elementwise pass: d loss / d lp[b, t] = row_scale[b] * mask * d per_token / d lp.
Aggregations (row_scale):
    token_mean           1 / N_tok                                  (DAPO token-level)
    seq_mean_token_mean  1 / (max(sum_t mask_b, 1) * N_seq)         (GRPO)
    seq_mean_token_sum   1 / (seq_sum_normaliser * N_seq)           (Dr. GRPO)
N_tok = num_tokens or max(sum(mask), 1); N_seq = num_sequences or the number of rows with a masked
token (at least 1): the same conventions as `learner.algos.aggregation`, whose `policy_loss` this
matches. Passing the mini-batch's totals makes micro-batch losses (and stats) add up to its loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from fused.backend import Backend, resolve_backend
from fused.policy_loss_types import LossTerms, RowStats, TokenInputs

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]


@dataclass(frozen=True)
class FusedLossOutput:
    """The loss to backpropagate and its detached parts; loss = pg_loss + kl_coef * kl."""

    loss: Tensor            # [] differentiable w.r.t. logprobs
    pg_loss: Tensor         # [] policy-gradient part, same aggregation as loss
    kl: Tensor              # [] k3 KL to the reference, same aggregation (0 without ref_logprobs)
    clip_frac_low: Tensor   # [] masked tokens with the low clip active (ratio < 1 - clip_low, A < 0) / N_tok
    clip_frac_high: Tensor  # [] masked tokens with the high clip active (ratio > 1 + clip_high, A > 0) / N_tok
    dual_clip_frac: Tensor  # [] masked tokens with the dual clip active (ratio > dual_clip, A < 0) / N_tok


@dataclass(frozen=True)
class Normalisers:
    """Global denominators of the aggregation; None falls back to this batch's own counts."""

    num_tokens: float | None
    num_sequences: float | None
    seq_sum_normaliser: float | None


def _tokens(stats: RowStats, norm: Normalisers) -> Tensor | float:
    return norm.num_tokens if norm.num_tokens is not None else stats.mask_sum.sum().clamp_min(1.0)


def _sequences(stats: RowStats, norm: Normalisers) -> Tensor | float:
    # Rows without a trained token are not sequences (as in learner.algos.aggregation).
    if norm.num_sequences is not None:
        return norm.num_sequences
    return (stats.mask_sum > 0).sum().clamp_min(1).float()


def _token_mean(stats: RowStats, norm: Normalisers) -> Tensor:
    return torch.ones_like(stats.mask_sum) / _tokens(stats, norm)                   # [B]


def _seq_mean_token_mean(stats: RowStats, norm: Normalisers) -> Tensor:
    return 1.0 / (stats.mask_sum.clamp_min(1.0) * _sequences(stats, norm))          # [B]


def _seq_mean_token_sum(stats: RowStats, norm: Normalisers) -> Tensor:
    return torch.ones_like(stats.mask_sum) / (norm.seq_sum_normaliser * _sequences(stats, norm))  # [B]


ROW_SCALES: dict[str, Callable[[RowStats, Normalisers], Tensor]] = {
    "token_mean": _token_mean,
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_sum": _seq_mean_token_sum,
}


def _implementation(backend: str) -> ModuleType:
    """The module holding `row_stats` / `token_grads` for a resolved backend (Triton imported only when used)."""
    if backend == "triton":
        from fused import policy_loss_triton

        return policy_loss_triton
    from fused import policy_loss_torch

    return policy_loss_torch


class _FusedPolicyLoss(torch.autograd.Function):
    """Autograd node: forward reduces to RowStats, backward recomputes per-token gradients in one pass."""

    @staticmethod
    def forward(ctx, logprobs: Tensor, rest: TokenInputs, terms: LossTerms, aggregation: str,
                norm: Normalisers, backend: str):
        impl = _implementation(backend)
        inputs = TokenInputs(logprobs.float().contiguous(), rest.old_logprobs, rest.behaviour_logprobs,
                             rest.advantages, rest.mask, rest.ref_logprobs)
        stats = impl.row_stats(inputs, terms)
        row_scale = ROW_SCALES[aggregation](stats, norm)                             # [B]
        tokens = _tokens(stats, norm)
        outputs = ((row_scale * stats.loss_sum).sum(), (row_scale * stats.pg_sum).sum(),
                   (row_scale * stats.kl_sum).sum(), stats.clipped_low.sum() / tokens,
                   stats.clipped_high.sum() / tokens, stats.dual_clipped.sum() / tokens)
        # logprobs through save_for_backward: autograd then notices if it is modified in place before backward.
        ctx.save_for_backward(logprobs)
        ctx.rest, ctx.terms, ctx.row_scale, ctx.backend = rest, terms, row_scale, backend
        ctx.mark_non_differentiable(*outputs[1:])
        return outputs

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *_grad_stats: Tensor):
        (logprobs,) = ctx.saved_tensors
        rest = ctx.rest
        inputs = TokenInputs(logprobs.float().contiguous(), rest.old_logprobs, rest.behaviour_logprobs,
                             rest.advantages, rest.mask, rest.ref_logprobs)
        scale = (ctx.row_scale * grad_loss).contiguous()                            # [B]
        grad = _implementation(ctx.backend).token_grads(inputs, ctx.terms, scale)  # [B, T]
        return grad.to(logprobs.dtype), None, None, None, None, None


def _as_tokens(name: str, value: Tensor | None, like: Tensor) -> Tensor | None:
    """`value` as a [B, T] fp32 contiguous tensor; [B] advantages are broadcast over T."""
    if value is None:
        return None
    if value.device != like.device:
        raise ValueError(f"{name}: on {value.device}, logprobs on {like.device}")
    if name == "advantages" and value.shape == like.shape[:1]:
        value = value[:, None].expand(like.shape)
    if value.shape != like.shape:
        raise ValueError(f"{name}: shape {tuple(value.shape)} differs from logprobs {tuple(like.shape)}")
    return value.detach().float().contiguous()


def _check_terms(logprobs: Tensor, terms: LossTerms, aggregation: str, norm: Normalisers,
                 behaviour: Tensor | None, ref: Tensor | None) -> None:
    if logprobs.dim() != 2 or not logprobs.is_floating_point():
        raise ValueError(f"logprobs: must be a float [B, T] tensor, got {logprobs.dtype} {tuple(logprobs.shape)}")
    if not 0.0 <= terms.clip_low < 1.0 or terms.clip_high < 0.0:
        raise ValueError(f"clip_low, clip_high: need 0 <= clip_low < 1 and clip_high >= 0, "
                         f"got {terms.clip_low}, {terms.clip_high}")
    if terms.dual_clip is not None and terms.dual_clip <= 1.0:
        raise ValueError(f"dual_clip: must be > 1 when given, got {terms.dual_clip}")
    if terms.tis_cap is not None and (terms.tis_cap <= 0 or behaviour is None):
        raise ValueError("tis_cap: must be > 0 and needs behaviour_logprobs")
    if terms.kl_coef < 0 or (terms.kl_coef > 0 and ref is None):
        raise ValueError(f"kl_coef: must be >= 0, and > 0 needs ref_logprobs; got {terms.kl_coef}")
    if aggregation not in ROW_SCALES:
        raise ValueError(f"aggregation: must be one of {sorted(ROW_SCALES)}, got {aggregation!r}")
    if aggregation == "seq_mean_token_sum" and not (norm.seq_sum_normaliser or 0) > 0:
        raise ValueError("seq_sum_normaliser: seq_mean_token_sum needs a positive constant (e.g. the max length)")
    for name in ("num_tokens", "num_sequences"):
        if getattr(norm, name) is not None and not getattr(norm, name) > 0:
            raise ValueError(f"{name}: must be > 0 when given, got {getattr(norm, name)}")


def fused_policy_loss(logprobs: Tensor, old_logprobs: Tensor, behaviour_logprobs: Tensor | None,
                      advantages: Tensor, mask: Tensor, ref_logprobs: Tensor | None = None, *,
                      clip_low: float, clip_high: float, tis_cap: float | None, kl_coef: float,
                      aggregation: Aggregation, dual_clip: float | None = None, num_tokens: float | None = None,
                      num_sequences: float | None = None, seq_sum_normaliser: float | None = None,
                      backend: Backend = "auto") -> FusedLossOutput:
    """PPO-clip + TIS + k3 KL loss over [B, T] log-probs (see the module docstring for the math).

    logprobs [B, T] (the only input differentiated), old/behaviour/ref_logprobs [B, T], advantages
    [B, T] or [B], mask [B, T] float. behaviour_logprobs may be None when tis_cap is None. Masked
    positions contribute nothing, even when they hold inf or NaN.
    """
    terms = LossTerms(clip_low, clip_high, tis_cap, dual_clip, kl_coef)
    norm = Normalisers(num_tokens, num_sequences, seq_sum_normaliser)
    _check_terms(logprobs, terms, aggregation, norm, behaviour_logprobs, ref_logprobs)
    rest = TokenInputs(
        logprobs=logprobs,  # replaced inside the autograd node by its fp32 copy
        old_logprobs=_as_tokens("old_logprobs", old_logprobs, logprobs),
        behaviour_logprobs=_as_tokens("behaviour_logprobs", behaviour_logprobs if tis_cap is not None else None, logprobs),
        advantages=_as_tokens("advantages", advantages, logprobs),
        mask=_as_tokens("mask", mask, logprobs),
        ref_logprobs=_as_tokens("ref_logprobs", ref_logprobs, logprobs),
    )
    resolved = resolve_backend(backend, logprobs.device)
    return FusedLossOutput(*_FusedPolicyLoss.apply(logprobs, rest, terms, aggregation, norm, resolved))
