"""GAE as the trainer calls it: a padded rollout batch, the critic's values, a KL folded into the reward."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from learner.batching import pad_batch
from learner.config import LearnerConfig
from learner.trainer import Trainer
from rlfleet.rollouts import Batch, FinishReason, Group, Sample


def _batch(with_advantages: bool = False) -> Batch:
    # one group; sample 0: 3 tokens, reward 1, generator log-probs -1, reference [-1.5, -1, -1]
    #            sample 1: 1 token, reward 0, log-prob -2, reference -2
    samples = [
        Sample(token_ids=[65, 66, 67], logprobs=[-1.0] * 3, finish_reason=FinishReason.STOP, reward=1.0,
               ref_logprobs=[-1.5, -1.0, -1.0], advantages=[3.0, 3.0, 3.0] if with_advantages else None),
        Sample(token_ids=[66], logprobs=[-2.0], finish_reason=FinishReason.STOP, reward=0.0, ref_logprobs=[-2.0],
               advantages=[-3.0] if with_advantages else None),
    ]
    return Batch("b", [Group(prompt_id="p", prompt_ids=[1, 2], samples=samples, policy_version=0)], "test")


def _trainer(**algo) -> Trainer:
    config = LearnerConfig.model_validate({"model": "unused", "algo": {
        "advantage": {"type": "gae", "gamma": 1.0, "lam": 0.5, "whiten": False},
        "kl": {"coef": 0.1, "estimator": "k1", "mode": "reward"}, **algo}})
    # advantages() touches no model: an engine that only answers what the constructor asks
    return Trainer(config, SimpleNamespace(device=torch.device("cpu"), has_critic=True))


# values of the states before each token; 7.0 sits on row 1's padding and must not matter
VALUES = torch.tensor([[0.2, 0.4, 0.6], [0.5, 7.0, 7.0]])


def test_gae_with_the_kl_in_the_reward_by_hand():
    # k1 KL per token = lp - ref: row 0 [0.5, 0, 0], row 1 [0] -> token rewards -0.1 * KL = [-0.05, 0, 0], [0]
    # row 0 rewards per token [-0.05, 0, 1] (the outcome on the last token), gamma 1, lambda 0.5:
    #   t2: delta = 1 + 0 - 0.6 = 0.4;          A = 0.4
    #   t1: delta = 0 + 0.6 - 0.4 = 0.2;        A = 0.2 + 0.5 * 0.4 = 0.4
    #   t0: delta = -0.05 + 0.4 - 0.2 = 0.15;   A = 0.15 + 0.5 * 0.4 = 0.35;   returns = A + V = [0.55, 0.8, 1.0]
    # row 1: delta = 0 + 0 - 0.5 = -0.5 = A; returns = 0
    padded = pad_batch(_batch(), pad_id=0)
    out = _trainer().advantages(padded, VALUES)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.35, 0.4, 0.4], [-0.5, 0.0, 0.0]]))
    torch.testing.assert_close(out.returns, torch.tensor([[0.55, 0.8, 1.0], [0.0, 0.0, 0.0]]))


def test_producer_advantages_drive_the_policy_while_gae_returns_train_the_critic():
    padded = pad_batch(_batch(with_advantages=True), pad_id=0)
    out = _trainer().advantages(padded, VALUES)
    torch.testing.assert_close(out.advantages, torch.tensor([[3.0, 3.0, 3.0], [-3.0, 0.0, 0.0]]))
    torch.testing.assert_close(out.returns, torch.tensor([[0.55, 0.8, 1.0], [0.0, 0.0, 0.0]]))


def test_a_critic_config_needs_an_engine_with_a_critic():
    config = LearnerConfig.model_validate({"model": "unused", "algo": {"advantage": {"type": "gae"}}})
    with pytest.raises(ValueError, match="critic"):
        Trainer(config, SimpleNamespace(device=torch.device("cpu"), has_critic=False))
