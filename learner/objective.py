"""The policy loss the training step calls: the fused kernel where it covers the config, else learner.algos.

`fused.fused_policy_loss` computes ratio, clip (low/high, dual), TIS and k3 KL with the
masked aggregation in one pass (Triton on CUDA, its PyTorch twin on the CPU) and equals
`learner.algos.policy_loss` for PPO-clip, loss, gradient and stats (tests/unit/fused,
tests/unit/learner/test_objective.py). GSPO and a k1/k2 KL in the loss have no fused form and use the
reference implementation; a k1/k2 KL that is only reported (kl.coef = 0, or kl.mode = "reward") is
computed here beside the kernel, which knows only k3. The choice is made once and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from fused import fused_policy_loss, pick_backend
from learner.algos import aggregate, kl_penalty, policy_loss, tis_weight
from learner.algos.config import AlgoConfig
from learner.algos.types import PolicyLossInput, PolicyLossOutput, PolicyLossStats

log = logging.getLogger(__name__)

PolicyObjective = Callable[[PolicyLossInput], PolicyLossOutput]


def fused_covers(algo: AlgoConfig) -> bool:
    """True when the fused kernel computes exactly what `learner.algos.policy_loss` would: PPO-clip, with
    no KL in the loss or a k3 one."""
    kl_in_loss = algo.kl.coef > 0 and algo.kl.mode == "loss"
    return algo.policy_loss.type == "ppo_clip" and (not kl_in_loss or algo.kl.estimator == "k3")


def select_objective(algo: AlgoConfig, device: torch.device, fused: bool = True) -> PolicyObjective:
    """The policy-loss function for this run (logged once)."""
    if fused and fused_covers(algo):
        backend = pick_backend(device)
        log.info("policy loss: fused kernel (%s backend) for ppo_clip", backend)
        return lambda inp: _fused(inp, algo, backend)
    log.info("policy loss: learner.algos.policy_loss (%s)", algo.policy_loss.type)
    return lambda inp: policy_loss(inp, algo)


def _fused(inp: PolicyLossInput, algo: AlgoConfig, backend: str) -> PolicyLossOutput:
    clip = algo.policy_loss
    kl_in_loss = algo.kl.coef if algo.kl.mode == "loss" else 0.0
    # The kernel's KL is k3; another estimator reaches here only when its KL is not in the loss
    # (fused_covers), so the kernel gets no reference and the reported KL is computed below.
    kernel_kl = algo.kl.estimator == "k3"
    out = fused_policy_loss(
        inp.logprobs, inp.old_logprobs, inp.behaviour_logprobs, inp.advantages, inp.mask,
        inp.ref_logprobs if kernel_kl else None,
        clip_low=clip.clip_low, clip_high=clip.clip_high, dual_clip=clip.dual_clip, tis_cap=algo.tis.cap,
        kl_coef=kl_in_loss if kernel_kl else 0.0, aggregation=algo.aggregation, num_tokens=inp.num_tokens,
        num_sequences=inp.num_sequences, seq_sum_normaliser=algo.seq_sum_normaliser, backend=backend)
    kl = out.kl if kernel_kl or inp.ref_logprobs is None else _reported_kl(inp, algo)
    return PolicyLossOutput(out.loss, PolicyLossStats(
        pg_loss=out.pg_loss, kl=kl, clip_frac_low=out.clip_frac_low, clip_frac_high=out.clip_frac_high,
        dual_clip_frac=out.dual_clip_frac, **_monitoring_stats(inp, algo)))


@torch.no_grad()
def _reported_kl(inp: PolicyLossInput, algo: AlgoConfig) -> torch.Tensor:
    """The KL stat as learner.algos.policy_loss reports it: the configured estimator and aggregation.  # []"""
    kl = kl_penalty(inp.logprobs.detach(), inp.ref_logprobs, algo.kl.estimator)  # [B, T]
    return aggregate(kl, inp.mask, algo.aggregation, inp.num_tokens, inp.num_sequences, algo.seq_sum_normaliser)


@torch.no_grad()
def _monitoring_stats(inp: PolicyLossInput, algo: AlgoConfig) -> dict[str, torch.Tensor | None]:
    """The stats the kernel does not produce, as learner.algos defines them (they never enter the loss)."""
    def token_mean(per_token: torch.Tensor) -> torch.Tensor:  # [B, T] -> []
        return aggregate(per_token.to(inp.mask.dtype), inp.mask, "token_mean", inp.num_tokens)

    cap = algo.tis.cap
    weight = tis_weight(inp.old_logprobs, inp.behaviour_logprobs, cap)  # [B, T]
    return {"ratio_mean": token_mean(torch.exp(inp.logprobs.detach() - inp.old_logprobs)),
            "tis_weight_mean": token_mean(weight),
            "tis_clip_frac": token_mean(weight >= cap if cap is not None else torch.zeros_like(weight)),
            "entropy": token_mean(inp.entropy) if inp.entropy is not None else None}
