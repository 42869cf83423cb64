"""Group and batch advantage estimators (GRPO, Dr.GRPO, RLOO, REINFORCE++, REINFORCE++-baseline) on hand-derived cases."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from learner.algos import ADVANTAGE_ESTIMATORS, AdvantageInput, AlgoConfig, compute_advantages
from learner.algos.config import AdvantageConfig

# Two interleaved groups: id 7 holds rewards [1, 0, 0.5], id 3 holds [2, 4].
REWARDS = torch.tensor([1.0, 2.0, 0.0, 0.5, 4.0], dtype=torch.float64)
GROUP_IDS = torch.tensor([7, 3, 7, 7, 3])


def _advantages(advantage: dict, rewards=REWARDS, group_ids=GROUP_IDS, mask=None, token_rewards=None) -> torch.Tensor:
    mask = torch.ones(len(rewards), 2, dtype=torch.float64) if mask is None else mask
    inp = AdvantageInput(rewards=rewards, group_ids=group_ids, mask=mask, token_rewards=token_rewards)
    # Dr.GRPO is only accepted with its constant-normaliser aggregation (which does not change advantages).
    pairing = {"aggregation": "seq_mean_token_sum", "seq_sum_normaliser": 8.0} if advantage["type"] == "dr_grpo" else {}
    return compute_advantages(inp, AlgoConfig(advantage=advantage, **pairing)).advantages


def test_grpo_divides_by_the_bessel_corrected_group_std():
    # group 7: mean 0.5, deviations [0.5, -0.5, 0], var = 0.5 / 2 = 0.25, std 0.5 -> A = [1, -1, 0]
    # group 3: mean 3, deviations [-1, 1], var = 2 / 1 = 2, std sqrt(2)  -> A = [-1/sqrt2, 1/sqrt2]
    advantages = _advantages({"type": "grpo", "eps": 0.0})
    s = 1 / math.sqrt(2)
    expected = torch.tensor([1.0, -s, -1.0, 0.0, s], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected[:, None].expand(5, 2))


def test_grpo_without_std_and_dr_grpo_only_centre():
    # deviations from the group means 0.5 and 3
    expected = torch.tensor([0.5, -1.0, -0.5, 0.0, 1.0], dtype=torch.float64)[:, None].expand(5, 2)
    torch.testing.assert_close(_advantages({"type": "grpo", "scale_by_std": False}), expected)
    torch.testing.assert_close(_advantages({"type": "dr_grpo"}), expected)


def test_rloo_subtracts_the_leave_one_out_mean():
    # group 7: 1 - (0 + 0.5)/2 = 0.75, 0 - (1 + 0.5)/2 = -0.75, 0.5 - (1 + 0)/2 = 0
    # group 3: 2 - 4 = -2, 4 - 2 = 2
    expected = torch.tensor([0.75, -2.0, -0.75, 0.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(_advantages({"type": "rloo"}), expected[:, None].expand(5, 2))


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_zero_padding_and_singleton_groups(kind):
    # a group of one has no baseline: advantage 0 (not NaN); padding (mask 0) stays 0
    rewards = torch.tensor([5.0, 1.0, 0.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    advantages = _advantages({"type": kind}, rewards, torch.tensor([9, 1, 1]), mask)
    assert advantages[0].abs().sum() == 0
    assert advantages[1, 2] == 0 and advantages[2, 1:].abs().sum() == 0
    assert advantages[1, 0] > 0 > advantages[2, 0]


def test_group_estimators_fold_masked_token_rewards_into_the_reward():
    # sequence rewards: 1 + (-0.5) = 0.5 (the 0.1 is on an untrained token) and 0 + 0 = 0
    # Dr.GRPO: mean 0.25 -> A = [0.25, -0.25]
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    token_rewards = torch.tensor([[-0.5, 0.1], [0.0, 0.0]], dtype=torch.float64)
    advantages = _advantages({"type": "dr_grpo"}, rewards, torch.tensor([0, 0]), mask, token_rewards)
    torch.testing.assert_close(advantages, torch.tensor([[0.25, 0.0], [-0.25, -0.25]], dtype=torch.float64))


def test_reinforce_pp_normalises_undiscounted_returns_over_the_batch():
    # returns: row 0 = 1 + [-0.5 + 0, 0] = [0.5, 1]; row 1 = 0 + [-1] (its 7 is on padding) = [-1]
    # mean over the 3 tokens = 1/6; deviations [1/3, 5/6, -7/6]; var = (4 + 25 + 49)/36/3 = 13/18
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    token_rewards = torch.tensor([[-0.5, 0.0], [-1.0, 7.0]], dtype=torch.float64)
    advantages = _advantages({"type": "reinforce_pp", "eps": 0.0}, rewards, torch.tensor([0, 1]), mask, token_rewards)
    std = math.sqrt(13 / 18)
    expected = torch.tensor([[1 / 3 / std, 5 / 6 / std], [-7 / 6 / std, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected)


def _variants(union) -> list[type]:
    """The config models of a discriminated union, each wrapped as Annotated[Model, Tag(...)]."""
    (members, _discriminator) = typing.get_args(union)
    return [typing.get_args(member)[0] for member in typing.get_args(members)]


def test_every_configurable_estimator_is_registered():
    names = {model.model_fields["type"].default for model in _variants(AdvantageConfig)}
    assert names == set(ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "rloo", "reinforce_pp",
                                                                 "reinforce_pp_baseline", "gae"}


def test_bad_shapes_name_the_field():
    with pytest.raises(ValueError, match="group_ids"):
        AdvantageInput(rewards=torch.zeros(3), group_ids=torch.zeros(2, dtype=torch.long), mask=torch.ones(3, 4))
    with pytest.raises(ValueError, match="values"):
        AdvantageInput(rewards=torch.zeros(3), group_ids=torch.zeros(3), mask=torch.ones(3, 4), values=torch.ones(3))


def test_reinforce_pp_with_outcome_rewards_only_weights_long_completions_by_their_tokens():
    # every token's return is its completion's reward: tokens [1, 1, 0]; mean 2/3,
    # var = (2 * (1/3)^2 + (2/3)^2) / 3 = 2/9, std = sqrt(2)/3 -> A = [1/sqrt2, 1/sqrt2, -sqrt2]
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    advantages = _advantages({"type": "reinforce_pp", "eps": 0.0}, rewards, torch.tensor([0, 0]), mask)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(advantages, torch.tensor([[s, s], [-math.sqrt(2), 0.0]], dtype=torch.float64))


def test_reinforce_pp_baseline_centres_on_the_group_then_whitens_over_the_batch():
    # group 0: rewards [1, 0], lengths 2 and 1 -> centred [0.5, -0.5]; group 1: rewards [2, 2] -> [0, 0]
    # token returns: [0.5, 0.5], [-0.5], [0], [0]; mean over 5 tokens = 0.5 / 5 = 0.1
    # deviations [0.4, 0.4], [-0.6], [-0.1], [-0.1]; var = (0.16 + 0.16 + 0.36 + 0.01 + 0.01) / 5 = 0.14
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    advantages = _advantages({"type": "reinforce_pp_baseline", "eps": 0.0}, rewards, torch.tensor([0, 0, 1, 1]), mask)
    std = math.sqrt(0.14)
    expected = torch.tensor([[0.4, 0.4], [-0.6, 0.0], [-0.1, 0.0], [-0.1, 0.0]], dtype=torch.float64) / std
    torch.testing.assert_close(advantages, expected)


def test_reinforce_pp_baseline_adds_token_rewards_after_the_baseline():
    # the baseline is the mean of the outcome rewards only: centred [0.5, -0.5]
    # returns-to-go of the token rewards: row 0 [-0.2, 0], row 1 [-0.4, -0.4]
    # G = [0.3, 0.5], [-0.9, -0.9]; mean -0.25; deviations [0.55, 0.75, -0.65, -0.65]
    # var = (0.3025 + 0.5625 + 0.4225 + 0.4225) / 4 = 0.4275
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    token_rewards = torch.tensor([[-0.2, 0.0], [0.0, -0.4]], dtype=torch.float64)
    advantages = _advantages({"type": "reinforce_pp_baseline", "eps": 0.0}, rewards, torch.tensor([5, 5]), mask,
                             token_rewards)
    expected = torch.tensor([[0.55, 0.75], [-0.65, -0.65]], dtype=torch.float64) / math.sqrt(0.4275)
    torch.testing.assert_close(advantages, expected)
