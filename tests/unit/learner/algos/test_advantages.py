"""Group and batch advantage estimators (GRPO, Dr.GRPO, RLOO, REINFORCE++) on hand-derived cases."""

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
    return compute_advantages(inp, AlgoConfig(advantage=advantage)).advantages


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
    assert names == set(ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"}


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
