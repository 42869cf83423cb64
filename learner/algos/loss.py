"""The policy loss: a clipped surrogate (picked by config) times the TIS weight, plus the KL, aggregated."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from learner.algos.aggregation import aggregate
from learner.algos.config import AlgoConfig
from learner.algos.gspo import gspo_terms
from learner.algos.kl import kl_penalty
from learner.algos.ppo import ppo_clip_terms
from learner.algos.tis import tis_weight
from learner.algos.types import ClipTerms, PolicyLossInput, PolicyLossOutput, PolicyLossStats

# policy_loss.type -> per-token clipped surrogate.
POLICY_LOSSES: dict[str, Callable[[PolicyLossInput, object], ClipTerms]] = {
    "ppo_clip": ppo_clip_terms,
    "gspo": gspo_terms,
}


def policy_loss(inp: PolicyLossInput, config: AlgoConfig) -> PolicyLossOutput:
    """The scalar to backpropagate for one (micro-)batch:

        w_t  = min(exp(old_logprobs - behaviour_logprobs), tis.cap), detached      (1 when tis.cap is unset)
        l_t  = w_t * pg_t + kl.coef * KL_t     KL_t = kl_penalty(logprobs, ref_logprobs, kl.estimator),
                                               only when kl.mode == "loss" and kl.coef > 0
        loss = aggregate(l, mask, aggregation, num_tokens, num_sequences, seq_sum_normaliser)

    pg_t is the surrogate of `config.policy_loss` (ppo.py, gspo.py). With kl.mode == "reward" the
    KL is not here: the engine folds -kl.coef * KL into AdvantageInput.token_rewards instead.
    Positions with mask == 0 contribute nothing to the loss, its gradient or the stats, even when
    they hold inf or NaN (as in the fused kernel).
    """
    inp = _zero_padding(inp)
    terms = POLICY_LOSSES[config.policy_loss.type](inp, config.policy_loss)
    weight = tis_weight(inp.old_logprobs, inp.behaviour_logprobs, config.tis.cap)  # [B, T]
    pg_loss = weight * terms.pg_loss  # [B, T]
    kl_in_loss = config.kl.mode == "loss" and config.kl.coef > 0
    if kl_in_loss and inp.ref_logprobs is None:
        raise ValueError("ref_logprobs: required when kl.coef > 0 and kl.mode is 'loss'")
    kl = None if inp.ref_logprobs is None else kl_penalty(inp.logprobs, inp.ref_logprobs, config.kl.estimator)
    per_token = pg_loss + config.kl.coef * kl if kl_in_loss else pg_loss  # [B, T]
    loss = _aggregate(per_token, inp, config)  # []
    return PolicyLossOutput(loss=loss, stats=_stats(inp, config, terms, weight, pg_loss, kl))


def _zero_padding(inp: PolicyLossInput) -> PolicyLossInput:
    """`inp` with every per-token tensor set to 0 where mask == 0.

    Masking the loss alone is not enough: a NaN old log-prob on padding gives a NaN ratio there, and
    the backward of a product passes 0 * NaN = NaN to logprobs. torch.where, not a product, for the
    same reason.
    """
    keep = inp.mask != 0  # [B, T]
    names = ("logprobs", "old_logprobs", "behaviour_logprobs", "advantages", "ref_logprobs", "entropy")
    return dataclasses.replace(inp, **{name: torch.where(keep, getattr(inp, name), 0.0)
                                       for name in names if getattr(inp, name) is not None})


def _aggregate(per_token: Tensor, inp: PolicyLossInput, config: AlgoConfig) -> Tensor:
    return aggregate(per_token, inp.mask, config.aggregation, inp.num_tokens, inp.num_sequences,
                     config.seq_sum_normaliser)  # []


def _token_mean(per_token: Tensor, inp: PolicyLossInput) -> Tensor:
    return aggregate(per_token.detach().to(inp.mask.dtype), inp.mask, "token_mean", inp.num_tokens)  # []


def _stats(inp: PolicyLossInput, config: AlgoConfig, terms: ClipTerms, weight: Tensor, pg_loss: Tensor,
           kl: Tensor | None) -> PolicyLossStats:
    cap = config.tis.cap
    return PolicyLossStats(
        pg_loss=_aggregate(pg_loss.detach(), inp, config),
        kl=_aggregate(kl.detach(), inp, config) if kl is not None else inp.mask.new_zeros(()),
        clip_frac_low=_token_mean(terms.clipped_low, inp),
        clip_frac_high=_token_mean(terms.clipped_high, inp),
        dual_clip_frac=_token_mean(terms.dual_clipped, inp),
        ratio_mean=_token_mean(terms.ratio, inp),
        tis_weight_mean=_token_mean(weight, inp),
        tis_clip_frac=_token_mean(weight >= cap if cap is not None else torch.zeros_like(weight), inp),
        entropy=_token_mean(inp.entropy, inp) if inp.entropy is not None else None,
    )
