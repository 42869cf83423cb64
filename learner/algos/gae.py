"""PPO advantage with a critic: generalised advantage estimation (Schulman et al. 2016), the critic loss and its stats."""

from __future__ import annotations

import torch
from torch import Tensor

from learner.algos.aggregation import aggregate
from learner.algos.config import GAEAdvantage
from learner.algos.masked import masked_mean, masked_whiten
from learner.algos.types import AdvantageInput, AdvantageOutput


def _token_rewards(inp: AdvantageInput) -> Tensor:
    """token_rewards on masked tokens plus the outcome reward on each row's last masked token.  # [B, T]"""
    mask = inp.mask
    rewards = inp.token_rewards * mask if inp.token_rewards is not None else torch.zeros_like(mask)  # [B, T]
    positions = torch.arange(mask.shape[1], device=mask.device)  # [T]
    last = torch.where(mask > 0, positions, -1).amax(-1)  # [B]; -1 for a row without trained tokens
    rows = torch.nonzero(last >= 0).squeeze(-1)  # [B']
    return rewards.index_put((rows, last[rows]), inp.rewards[rows], accumulate=True)  # [B, T]


def gae_advantages(inp: AdvantageInput, config: GAEAdvantage) -> AdvantageOutput:
    """Backward recursion over the trained tokens of each completion (Schulman et al. 2016, eq. 16):

        delta_t = r_t + gamma * V_{t'} - V_t           t' = next masked token (V = 0 after the last)
        A_t     = delta_t + gamma * lam * A_{t'}
        returns = A + V                                 (before whitening: the critic's target)

    Untrained tokens (mask 0, e.g. tool output) are skipped: value and advantage carry across them,
    as in verl. r_t = token_rewards_t, plus `rewards` on the last masked token. With whiten, the
    advantages are normalised over all masked tokens of the batch.
    """
    if inp.values is None:
        raise ValueError("values: required by the gae advantage")
    mask, values = inp.mask, inp.values.detach()  # [B, T], [B, T]
    rewards = _token_rewards(inp)  # [B, T]
    next_value = torch.zeros_like(values[:, 0])  # [B]
    next_advantage = torch.zeros_like(values[:, 0])  # [B]
    advantages = torch.zeros_like(values)  # [B, T]
    for t in reversed(range(mask.shape[1])):
        m = mask[:, t]  # [B]
        delta = rewards[:, t] + config.gamma * next_value - values[:, t]  # [B]
        advantage = delta + config.gamma * config.lam * next_advantage  # [B]
        advantages[:, t] = advantage * m
        next_value = m * values[:, t] + (1 - m) * next_value
        next_advantage = m * advantage + (1 - m) * next_advantage
    returns = (advantages + values) * mask  # [B, T]
    if config.whiten:
        advantages = masked_whiten(advantages, mask, config.eps)  # [B, T]
    return AdvantageOutput(advantages=advantages, returns=returns)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float,
               mode: str = "token_mean", num_tokens: float | None = None, num_sequences: float | None = None,
               seq_sum_normaliser: float | None = None) -> Tensor:
    """Clipped critic loss (Schulman et al. 2017; as in OpenAI baselines' ppo2), aggregated like the policy loss:

        V_clip = old_values + clip(values - old_values, -clip, clip)
        L_t    = 0.5 * max((values - returns)^2, (V_clip - returns)^2)

    Not weighted: multiply by AlgoConfig.value.coef before adding it to the policy loss.  # []
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)  # [B, T]
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)  # [B, T]
    return aggregate(per_token, mask, mode, num_tokens, num_sequences, seq_sum_normaliser)  # []


def value_clip_frac(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float,
                    num_tokens: float | None = None) -> Tensor:
    """Fraction of masked tokens whose value loss is the clipped term, i.e. whose value gradient the
    clip zeroed: (V_clip - R)^2 > (V - R)^2 (TRL's vf_clipfrac). Normalised by num_tokens like the
    policy stats, so micro-batch values add up.  # []"""
    clipped = old_values + (values - old_values).clamp(-clip, clip)  # [B, T]
    hit = ((clipped - returns) ** 2 > (values - returns) ** 2).to(mask.dtype)  # [B, T]
    return aggregate(hit, mask, "token_mean", num_tokens)  # []


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(returns - values) / Var(returns) over the masked tokens (population variances).  # []

    1: the critic predicts the returns exactly; 0: no better than their mean; < 0: worse. NaN when
    the returns do not vary (nothing to explain).
    """
    residual = returns - values  # [B, T]
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)  # []
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)  # []
    return torch.where(var_returns > 0, 1 - var_residual / var_returns, torch.nan)  # []
