"""Rejection sampling: which completions each group keeps, and the NLL term on them."""

from __future__ import annotations

import pytest
import torch

from learner.algos import AlgoConfig, nll_loss, sft_mask, top_of_each_group

F64 = torch.float64


def test_keeps_the_top_fraction_of_each_group_rounding_up():
    # group 7 (5 samples): ceil(0.2 * 5) = 1 -> the 0.9; group 3 (4 samples): ceil(0.2 * 4) = 1 -> the 2.0
    # at 0.5: group 7 keeps ceil(2.5) = 3 -> 0.9, 0.5 and the first 0.4 (tie to the earlier sample); group 3 keeps 2
    rewards = torch.tensor([0.1, 2.0, 0.9, 0.4, 1.0, 0.5, 0.4, 0.0, -1.0])
    group_ids = torch.tensor([7, 3, 7, 7, 3, 7, 7, 3, 3])
    assert top_of_each_group(rewards, group_ids, 0.2).tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert top_of_each_group(rewards, group_ids, 0.5).tolist() == [0, 1, 1, 1, 1, 1, 0, 0, 0]
    assert top_of_each_group(rewards, group_ids, 1.0).all()


def test_min_reward_leaves_an_all_wrong_group_without_a_target():
    rewards = torch.tensor([0.0, 0.0, 1.5, 0.5])
    keep = top_of_each_group(rewards, torch.tensor([0, 0, 1, 1]), 0.2, min_reward=1.0)
    assert keep.tolist() == [False, False, True, False]


def test_nll_is_the_token_mean_over_kept_tokens_and_ignores_padding():
    # kept tokens: row 0's two (log-probs -1, -3) and row 2's one (-2); row 1 is not kept, its NaN is padding
    # NLL = (1 + 3 + 2) / 3 = 2; d/dlp = -1/3 on each kept token
    logprobs = torch.tensor([[-1.0, -3.0], [float("nan"), -0.5], [-2.0, 9.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]], dtype=F64)
    loss = nll_loss(logprobs, mask)
    loss.backward()
    assert loss.item() == pytest.approx(2.0)
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1 / 3, -1 / 3], [0.0, 0.0], [-1 / 3, 0.0]], dtype=F64))
    # with the mini-batch's 6 kept tokens as normaliser this micro-batch contributes 6 / 6 = 1
    assert nll_loss(logprobs, mask, num_tokens=6.0).item() == pytest.approx(1.0)
    assert nll_loss(logprobs, torch.zeros_like(mask)).item() == 0.0


def test_config_defaults_to_off_with_a_fifth_of_each_group():
    config = AlgoConfig()
    assert config.rejection_sampling.coef == 0 and config.rejection_sampling.top_fraction == 0.2
    on = AlgoConfig.model_validate({"rejection_sampling": {"coef": 0.1}})
    assert on.rejection_sampling.top_fraction == 0.2 and on.rejection_sampling.min_reward is None
    with pytest.raises(ValueError, match="top_fraction"):
        AlgoConfig.model_validate({"rejection_sampling": {"coef": 0.1, "top_fraction": 0}})


def test_a_multi_turn_trajectory_is_imitated_on_its_model_turns_only():
    # One group of two trajectories, each: model turn (2 tokens), observation (2 tokens, loss_mask 0),
    # model answer (1 token). Rewards 1 and 0: the top half keeps trajectory 0, whose model tokens only
    # (positions 0, 1 and 4) enter the NLL; the observation's tokens never do, nor does the padding.
    from learner.batching import pad_batch
    from rlfleet.rollouts import Batch, FinishReason, Group, Sample

    def trajectory(reward: float, length: int) -> Sample:
        mask = [True, True, False, False, True][:length]
        return Sample(token_ids=list(range(10, 10 + length)), logprobs=[-1.0] * length, finish_reason=FinishReason.STOP,
                      reward=reward, loss_mask=mask)

    group = Group(prompt_id="p", prompt_ids=[1, 2], samples=[trajectory(1.0, 5), trajectory(0.0, 4)],
                  policy_version=0)
    padded = pad_batch(Batch(batch_id="b", groups=[group], producer="test"), pad_id=0)
    mask = sft_mask(padded.mask, padded.rewards, padded.group_ids, fraction=0.5, min_reward=1.0)
    assert mask.tolist() == [[1, 1, 0, 0, 1], [0, 0, 0, 0, 0]]
    logprobs = torch.tensor([[-1.0, -2.0, -50.0, -50.0, -3.0], [-9.0, -9.0, -9.0, -9.0, float("nan")]])
    assert nll_loss(logprobs, mask).item() == pytest.approx((1 + 2 + 3) / 3)
