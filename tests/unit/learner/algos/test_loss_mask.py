"""Multi-turn trajectories: environment tokens (loss_mask 0) count nowhere in advantages, aggregation or the loss."""

from __future__ import annotations

import math

import pytest
import torch

from learner.algos import AdvantageInput, AlgoConfig, PolicyLossInput, aggregate, compute_advantages, policy_loss
from learner.batching import pad_batch
from rlfleet.rollouts import Batch, FinishReason, Group, Sample

F64 = torch.float64


def _trajectory(tokens, loss_mask, logprobs, reward) -> Sample:
    return Sample(token_ids=tokens, logprobs=logprobs, loss_mask=loss_mask, reward=reward,
                  finish_reason=FinishReason.STOP)


def _group() -> Batch:
    # Two trajectories of one row (prompt [5, 6]). A: model [10, 11], observation [20, 21], model [12];
    # B: model [13], observation [22], model [14]. Observations carry log-prob 0 (nobody sampled them).
    a = _trajectory([10, 11, 20, 21, 12], [True, True, False, False, True], [-0.5, -0.25, 0.0, 0.0, -1.0], 1.0)
    b = _trajectory([13, 22, 14], [True, False, True], [-2.0, 0.0, -0.125], 0.0)
    return Batch("b", [Group("row", [5, 6], [a, b], policy_version=1)])


def test_pad_batch_mask_is_the_loss_mask_within_the_completion():
    padded = pad_batch(_group(), pad_id=0)
    assert padded.mask.tolist() == [[1, 1, 0, 0, 1], [1, 0, 1, 0, 0]]
    # every token, observations included, is model input: the learner sees the generator's context
    assert padded.input_ids.tolist() == [[5, 6, 10, 11, 20, 21], [5, 6, 13, 22, 0, 0]]
    assert padded.behaviour_logprobs.tolist() == [[-0.5, -0.25, 0.0, 0.0, -1.0], [-2.0, 0.0, -0.125, 0.0, 0.0]]


@pytest.mark.parametrize(("mode", "expected"), [
    ("token_mean", 15 / 5),                      # (1 + 2 + 3) + (4 + 5) over 5 model tokens; the 100s are masked
    ("seq_mean_token_mean", (6 / 3 + 9 / 2) / 2),  # row means over their model tokens: 2 and 4.5
    ("seq_mean_token_sum", (6 / 4 + 9 / 4) / 2),   # row sums / C = 4
])
def test_aggregation_counts_model_tokens_only(mode, expected):
    mask = pad_batch(_group(), pad_id=0).mask.to(F64)
    per_token = torch.tensor([[1.0, 2.0, 100.0, 100.0, 3.0], [4.0, 100.0, 5.0, 100.0, 100.0]], dtype=F64)
    assert aggregate(per_token, mask, mode, seq_sum_normaliser=4.0).item() == pytest.approx(expected)


def test_grpo_advantage_is_per_trajectory_on_model_tokens_only():
    padded = pad_batch(_group(), pad_id=0)
    out = compute_advantages(AdvantageInput(rewards=padded.rewards, group_ids=padded.group_ids, mask=padded.mask),
                             AlgoConfig())
    # rewards 1, 0: mean 0.5, Bessel std sqrt((0.25 + 0.25) / 1) = sqrt(0.5); A = +-0.5 / sqrt(0.5) = +-sqrt(0.5)
    s = math.sqrt(0.5)
    torch.testing.assert_close(out.advantages, torch.tensor([[s, s, 0, 0, s], [-s, 0, -s, 0, 0]]), atol=1e-4, rtol=0)


def test_policy_loss_ignores_observation_log_probs():
    padded = pad_batch(_group(), pad_id=0)
    mask = padded.mask.to(F64)
    s = math.sqrt(0.5)
    advantages = torch.tensor([[s, s, 0, 0, s], [-s, 0, -s, 0, 0]], dtype=F64)
    behaviour = padded.behaviour_logprobs.to(F64)
    # The learner's log-probs equal the behaviour ones on model tokens; on observations the model finds the
    # environment's text very unlikely (-50), against a behaviour "log-prob" of 0: weight exp(-50) if it counted.
    current = torch.where(mask > 0, behaviour, torch.full_like(behaviour, -50.0)).requires_grad_()
    inp = PolicyLossInput(logprobs=current, old_logprobs=current.detach(), behaviour_logprobs=behaviour,
                          advantages=advantages, mask=mask)
    out = policy_loss(inp, AlgoConfig())
    out.loss.backward()
    # ratio 1 on model tokens: pg = -A; token mean over 5 model tokens: -(3s - 2s) / 5 = -s / 5
    assert out.loss.item() == pytest.approx(-s / 5)
    assert out.stats.ratio_mean.item() == pytest.approx(1.0) and out.stats.tis_weight_mean.item() == pytest.approx(1.0)
    # d loss / d logprob_t = -A_t / 5 on model tokens, exactly 0 on observations and padding
    torch.testing.assert_close(current.grad, -advantages / 5)


def test_loss_mask_and_observation_log_probs_cross_the_wire():
    from rlfleet.rollouts import batch_from_proto, batch_to_proto

    batch = _group()
    back = batch_from_proto(batch_to_proto(batch))
    assert back == batch
    assert back.groups[0].samples[1].loss_mask == [True, False, True]
