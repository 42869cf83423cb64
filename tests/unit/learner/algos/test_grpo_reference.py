"""GRPO end to end on a frozen batch against an independent, loop-by-loop implementation written here."""

from __future__ import annotations

import math

import pytest
import torch

from learner.algos import AdvantageInput, AlgoConfig, PolicyLossInput, compute_advantages, policy_loss

F64 = torch.float64
CLIP_LOW, CLIP_HIGH, TIS_CAP, BETA = 0.2, 0.28, 2.0, 0.04


def _frozen_batch():
    g = torch.Generator().manual_seed(1234)
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    lengths = [5, 2, 4, 1, 5, 3, 5, 4]
    B, T = len(lengths), 5
    mask = torch.zeros(B, T, dtype=F64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    mask[4, 2] = 0  # an untrained token inside a completion (tool output)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.2, 0.9, 0.0, 1.0, 1.0], dtype=F64)  # group 2 is uniform
    old = -torch.rand(B, T, generator=g, dtype=F64) * 2
    lp = old + torch.randn(B, T, generator=g, dtype=F64) * 0.25  # some ratios fall outside the clip
    behaviour = old + torch.randn(B, T, generator=g, dtype=F64) * 0.5
    ref = old + torch.randn(B, T, generator=g, dtype=F64) * 0.3
    return group_ids, mask, rewards, old, lp, behaviour, ref


def _reference_loss(group_ids, mask, rewards, old, lp, behaviour, ref, per_sequence_mean: bool):
    """Written from the formulas, one token at a time; shares no code with learner.algos."""
    total, tokens, sequences = 0.0, 0, 0
    per_sequence = []
    for i in range(len(rewards)):
        group = [rewards[j].item() for j in range(len(rewards)) if group_ids[j] == group_ids[i]]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
        advantage = (rewards[i].item() - mean) / (std + 1e-6)
        seq_total, seq_tokens = 0.0, 0
        for t in range(mask.shape[1]):
            if mask[i, t] == 0:
                continue
            ratio = torch.exp(lp[i, t] - old[i, t])
            surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH) * advantage)
            weight = min(math.exp(old[i, t].item() - behaviour[i, t].item()), TIS_CAP)
            log_r = ref[i, t] - lp[i, t]
            seq_total = seq_total + (-weight * surrogate + BETA * (torch.exp(log_r) - log_r - 1))
            seq_tokens += 1
        total, tokens = total + seq_total, tokens + seq_tokens
        if seq_tokens:
            per_sequence.append(seq_total / seq_tokens)
            sequences += 1
    return sum(per_sequence) / sequences if per_sequence_mean else total / tokens


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_grpo_loss_and_gradient_match_the_reference(aggregation):
    group_ids, mask, rewards, old, lp, behaviour, ref = _frozen_batch()
    config = AlgoConfig.model_validate({"kl": {"coef": BETA, "estimator": "k3"}, "tis": {"cap": TIS_CAP},
                                        "policy_loss": {"clip_low": CLIP_LOW, "clip_high": CLIP_HIGH},
                                        "aggregation": aggregation})
    advantages = compute_advantages(AdvantageInput(rewards=rewards, group_ids=group_ids, mask=mask), config).advantages
    mine = lp.clone().requires_grad_()
    out = policy_loss(PolicyLossInput(logprobs=mine, old_logprobs=old, behaviour_logprobs=behaviour,
                                      advantages=advantages, mask=mask, ref_logprobs=ref), config)
    (grad,) = torch.autograd.grad(out.loss, mine)

    theirs = lp.clone().requires_grad_()
    expected = _reference_loss(group_ids, mask, rewards, old, theirs, behaviour, ref, aggregation != "token_mean")
    (expected_grad,) = torch.autograd.grad(expected, theirs)

    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    # the batch exercises both clip bounds and the TIS cap, else the comparison proves little
    assert out.stats.clip_frac_low > 0 and out.stats.clip_frac_high > 0 and out.stats.tis_clip_frac > 0
